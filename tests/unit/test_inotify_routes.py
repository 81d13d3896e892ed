"""Routing a shared inotify instance's events: by entry name in a directory, by inode for files."""

from __future__ import annotations

import inotify_simple

from tcppipe.inotify_routes import IN_IGNORED, IN_Q_OVERFLOW, Routes
from tcppipe.watch import DIR_MASK, FILE_MASK

flags = inotify_simple.flags
CREATE, MOVED_FROM, MOVED_TO, DELETE = int(flags.CREATE), int(flags.MOVED_FROM), int(flags.MOVED_TO), int(flags.DELETE)
MODIFY = int(flags.MODIFY)
DIR_WD, OTHER_DIR_WD = 1, 2


def directory_of(names: list[str], wd: int = DIR_WD) -> Routes[str]:
    """One subscriber per name, each the pipe of that file, all in one directory."""
    routes: Routes[str] = Routes()
    for name in names:
        routes.subscribe_name(wd, name, name)
    return routes


def test_the_masks_are_inotify_h_s() -> None:
    """The constants this package spells as numbers are inotify_simple's flags."""
    assert IN_Q_OVERFLOW == flags.Q_OVERFLOW
    assert IN_IGNORED == flags.IGNORED
    assert flags.CREATE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE == DIR_MASK
    assert flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE | flags.MOVE_SELF | flags.DELETE_SELF == FILE_MASK


def test_a_directory_event_wakes_only_the_pipe_of_that_name() -> None:
    """CREATE a.log in a directory of three pipes wakes a.log's pipe, not its neighbours."""
    routes = directory_of(["a.log", "b.log", "c.log"])
    assert routes.route([(DIR_WD, CREATE, "a.log")]).wake == {"a.log"}


def test_a_name_nobody_follows_wakes_nobody() -> None:
    """A rotated name (a.log.1) or a stranger's file in the directory wakes no pipe."""
    routes = directory_of(["a.log", "b.log"])
    routed = routes.route([(DIR_WD, MOVED_TO, "a.log.1"), (DIR_WD, CREATE, "x.tmp"), (DIR_WD, DELETE, "")])
    assert routed.wake == set()
    assert not routed.everyone


def test_the_same_name_in_another_directory_is_another_pipe() -> None:
    """app.log in /a and app.log in /b: an event in /b wakes /b's pipe only."""
    routes: Routes[str] = Routes()
    routes.subscribe_name(DIR_WD, "app.log", "/a/app.log")
    routes.subscribe_name(OTHER_DIR_WD, "app.log", "/b/app.log")
    assert routes.route([(OTHER_DIR_WD, CREATE, "app.log")]).wake == {"/b/app.log"}


def test_a_logrotate_run_wakes_each_pipe_once() -> None:
    """2,000 files rotated (MOVED_FROM, MOVED_TO .1, CREATE each): 2,000 wake-ups in all, one per pipe."""
    names = [f"app{i}.log" for i in range(2000)]
    routes = directory_of(names)
    events = []
    for name in names:
        events += [(DIR_WD, MOVED_FROM, name), (DIR_WD, MOVED_TO, name + ".1"), (DIR_WD, CREATE, name)]
    routed = routes.route(events)
    assert routed.wake == set(names)
    assert len(routed.wake) == 2000


def test_a_file_event_wakes_every_pipe_holding_that_inode() -> None:
    """A MODIFY on a watched inode wakes its subscribers (two pipes that hold it), nobody else."""
    routes: Routes[str] = Routes()
    routes.subscribe_all(10, "p")
    routes.subscribe_all(10, "q")
    routes.subscribe_all(11, "r")
    assert routes.route([(10, MODIFY, "")]).wake == {"p", "q"}
    assert routes.route([(12, MODIFY, "")]).wake == set()  # a watch already given back


def test_an_overflow_wakes_everyone() -> None:
    """IN_Q_OVERFLOW (wd -1) lost events nobody can name: everyone is woken."""
    routes = directory_of(["a.log"])
    routed = routes.route([(-1, IN_Q_OVERFLOW, "")])
    assert routed.everyone


def test_ignored_forgets_the_watch_and_tells_who_had_it() -> None:
    """IN_IGNORED: the descriptor is forgotten, its subscribers woken and listed as having lost it."""
    routes = directory_of(["a.log", "b.log"])
    routes.subscribe_all(7, "a.log")
    routed = routes.route([(DIR_WD, IN_IGNORED, "")])
    assert routed.wake == {"a.log", "b.log"}
    assert routed.lost == {DIR_WD: {"a.log", "b.log"}}
    assert not routes.in_use(DIR_WD)
    assert routes.in_use(7)
    assert routes.route([(DIR_WD, CREATE, "a.log")]).wake == set()


def test_ignored_of_a_watch_already_given_back_is_nothing() -> None:
    """The IN_IGNORED that follows our own rm_watch names nobody."""
    routes = directory_of(["a.log"])
    assert routes.unsubscribe(DIR_WD, "a.log")
    routed = routes.route([(DIR_WD, IN_IGNORED, "")])
    assert routed.wake == set()
    assert routed.lost == {}


def test_a_watch_is_in_use_until_its_last_subscriber_leaves() -> None:
    """Two pipes in one directory share its watch: the first to leave keeps it, the last removes it."""
    routes = directory_of(["a.log", "b.log"])
    assert not routes.unsubscribe(DIR_WD, "a.log")
    assert routes.route([(DIR_WD, CREATE, "b.log")]).wake == {"b.log"}
    assert routes.route([(DIR_WD, CREATE, "a.log")]).wake == set()
    assert routes.unsubscribe(DIR_WD, "b.log")
    assert not routes.in_use(DIR_WD)


def test_two_pipes_of_one_name_both_wake_and_one_leaving_keeps_the_other() -> None:
    """The same FILE name subscribed twice (a pipe ending, its successor starting): both wake; one leaves."""
    routes: Routes[str] = Routes()
    routes.subscribe_name(DIR_WD, "a.log", "old")
    routes.subscribe_name(DIR_WD, "a.log", "new")
    assert routes.route([(DIR_WD, CREATE, "a.log")]).wake == {"old", "new"}
    assert not routes.unsubscribe(DIR_WD, "old")
    assert routes.route([(DIR_WD, CREATE, "a.log")]).wake == {"new"}


def test_a_batch_wakes_each_subscriber_once() -> None:
    """Many events for one pipe in a batch make a single wake-up entry."""
    routes = directory_of(["a.log"])
    routes.subscribe_all(5, "a.log")
    routed = routes.route([(5, MODIFY, "")] * 100 + [(DIR_WD, CREATE, "a.log")])
    assert routed.wake == {"a.log"}


def test_the_scan_s_directory_subscription_wakes_on_any_name_beside_the_pipes() -> None:
    """The agent's scan subscribes to the whole directory: any entry event wakes it, and the pipe of that name."""
    routes = directory_of(["a.log", "b.log"])
    routes.subscribe_all(DIR_WD, "scan")
    assert routes.route([(DIR_WD, CREATE, "new.log")]).wake == {"scan"}
    assert routes.route([(DIR_WD, CREATE, "a.log")]).wake == {"scan", "a.log"}
    assert not routes.unsubscribe(DIR_WD, "scan")  # the pipes still need the watch
    assert routes.route([(DIR_WD, CREATE, "new.log")]).wake == set()
