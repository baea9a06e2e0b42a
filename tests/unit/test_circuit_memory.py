"""MaxMemInQueues: the limit tor computes, the victims its OOM handler picks, and the tracker that counts what
oppy's streams queue, driven through real Streams on real Circuits built through simulated relays, with a
clock the test moves."""

import pytest

from oppy.cell.commands import DestroyReason, EndReason
from oppy.circuit.circuit import Circuit, CircuitState
from oppy.circuit.memory import (
    MAX_DEFAULT_MEMORY_QUEUE_SIZE,
    MIN_MAX_MEM_IN_QUEUES,
    CircuitQueues,
    MemoryTracker,
    choose_victims,
    max_mem_in_queues,
)
from oppy.stream.stream import Stream, StreamState
from tests.support.streams import CollectingSink
from tests.unit.relaysim import CMD_RELAY, RELAY_CONNECTED, RELAY_DATA, RELAY_DATA_LEN, build_circuit

MB = 1 << 20
GB = 1 << 30
EXIT = 2


# ------------------------------------------------------------------------------------------------ the limit

@pytest.mark.parametrize("configured, ram, testing, expected", [
    (0, 4 * GB, False, 3 * GB),                         # under 8 GB of RAM: 75% of it
    (0, 16 * GB, False, 16 * GB // 5 * 2),              # from 8 GB on: 40%
    (0, 64 * GB, False, MAX_DEFAULT_MEMORY_QUEUE_SIZE),  # never more than 8 GB by itself
    (0, 256 * MB, False, MIN_MAX_MEM_IN_QUEUES),        # nor less than 256 MB
    (0, None, False, 8 * GB),                           # RAM unknown: "let's hope for 8 GB"
    (1 * GB, 4 * GB, False, 1 * GB),
    (12 * GB, 4 * GB, False, 12 * GB),                  # a value set by hand is kept
    (10 * MB, 4 * GB, True, 10 * MB),                   # oppy's exception for test networks
])
def test_the_limit_is_computed_as_tor_does(configured, ram, testing, expected):
    assert max_mem_in_queues(configured, ram, testing) == (expected, None)


def test_a_limit_under_256_megabytes_is_raised_with_tors_warning():
    limit, warning = max_mem_in_queues(10 * MB, 4 * GB, False)
    assert limit == 256 * MB
    assert warning == "MaxMemInQueues must be at least 256 MB for now. Ideally, have it as large as you can afford."


# ------------------------------------------------------------------------------------------------ the victims

def holding(name, queued, oldest):
    return CircuitQueues(name, queued, oldest, ())


def test_victims_are_the_circuits_with_the_oldest_queued_data_until_enough_is_freed():
    holdings = [holding("young and big", 900, 50.0), holding("oldest", 100, 10.0), holding("old", 300, 20.0),
                holding("empty", 0, 0.0)]
    assert [v.circuit for v in choose_victims(holdings, 50)] == ["oldest"]
    assert [v.circuit for v in choose_victims(holdings, 101)] == ["oldest", "old"]
    assert [v.circuit for v in choose_victims(holdings, 10_000)] == ["oldest", "old", "young and big"]
    assert choose_victims(holdings, 0) == []


def test_among_equally_old_data_the_circuit_holding_more_goes_first():
    holdings = [holding("small", 100, 10.0), holding("big", 500, 10.0)]
    assert [v.circuit for v in choose_victims(holdings, 1)] == ["big"]


# ------------------------------------------------------------------------------------------------ the tracker

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Download:
    """A stream on a circuit of its own, CONNECTED, whose client has stopped reading."""

    def __init__(self, tracker):
        self.circuit, self.channel, self.path = build_circuit(Circuit)
        self.sink = CollectingSink()
        self.stream = Stream(self.sink, "example.com", 80, account=tracker)
        self.stream.attach(self.circuit)
        self.channel.take()
        self.send(RELAY_CONNECTED, b"")
        self.stream.pause_delivery()

    def send(self, command, data=b""):
        self.circuit.cell_received(CMD_RELAY, self.path.send(EXIT, command, self.stream.stream_id, data))

    def receive_cells(self, count):
        """`count` full DATA cells in one read (one batch)."""
        cells = [self.path.send(EXIT, RELAY_DATA, self.stream.stream_id, b"d" * RELAY_DATA_LEN) for _ in range(count)]
        self.circuit.relay_cells_received(b"".join(cells))


class CountingTracker(MemoryTracker):
    """The tracker, also keeping each change it hears."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.changes = []

    def queued_changed(self, stream, delta):
        self.changes.append(delta)
        super().queued_changed(stream, delta)


def test_the_tracker_hears_each_stream_once_per_read_not_per_cell():
    tracker = CountingTracker(100 * MB, clock=Clock())
    download = Download(tracker)
    download.receive_cells(40)
    download.receive_cells(60)
    assert tracker.changes == [40 * RELAY_DATA_LEN, 60 * RELAY_DATA_LEN]
    download.stream.write(b"request" * 1000)  # goes out at once: the send buffer is back to empty
    assert tracker.changes == [40 * RELAY_DATA_LEN, 60 * RELAY_DATA_LEN]
    download.stream.resume_delivery()  # the client reads all of it in one go
    assert tracker.changes[2:] == [-100 * RELAY_DATA_LEN] and tracker.queued_in_streams == 0


def test_out_of_memory_closes_the_circuit_with_the_oldest_data_and_no_other(caplog):
    clock = Clock()
    per_stream = 100 * RELAY_DATA_LEN
    tracker = MemoryTracker(max_bytes=5 * per_stream, clock=clock)
    downloads = [Download(tracker) for _ in range(3)]
    normal = Download(tracker)
    normal.stream.resume_delivery()  # a client that reads: nothing stays queued for it
    # Two stalled streams on one circuit make the biggest and oldest holder.
    offender = downloads[0]
    second = Stream(CollectingSink(), "example.com", 80, account=tracker)
    second.attach(offender.circuit)
    offender.circuit.cell_received(CMD_RELAY, offender.path.send(EXIT, RELAY_CONNECTED, second.stream_id))
    second.pause_delivery()
    idle = Stream(CollectingSink(), "example.com", 80, account=tracker)  # holds nothing, on the same circuit
    idle.attach(offender.circuit)
    offender.circuit.cell_received(CMD_RELAY, offender.path.send(EXIT, RELAY_CONNECTED, idle.stream_id))
    offender.receive_cells(100)
    offender.circuit.relay_cells_received(
        b"".join(offender.path.send(EXIT, RELAY_DATA, second.stream_id, b"s" * RELAY_DATA_LEN) for _ in range(50)))
    for download in downloads[1:]:
        clock.now += 1
        download.receive_cells(100)
    clock.now += 1
    normal.receive_cells(200)
    assert tracker.queued_in_streams == 3.5 * per_stream and tracker.circuits_closed == 0
    with caplog.at_level("NOTICE", logger="oppy.circuit.memory"):
        downloads[2].receive_cells(150)  # 5 * per_stream: the limit is reached
    # The offender held the oldest data: it goes, with one line saying why; that was enough.
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith("We're low on memory") and f"circuit {offender.circuit.circ_id:#x}" in line
    assert f"which held {150 * RELAY_DATA_LEN} bytes in 2 of its 3 stream(s), the oldest queued 3.0 s ago" in line
    assert offender.circuit.state is CircuitState.CLOSED
    assert offender.channel.destroyed == [(offender.circuit.circ_id, DestroyReason.NONE)]
    assert offender.circuit.error.reason == DestroyReason.RESOURCELIMIT
    for stream in (offender.stream, second, idle):  # each of them ends as dropped for memory
        assert stream.state is StreamState.CLOSED and stream.end.reason == EndReason.RESOURCELIMIT
    assert offender.sink.length == 0  # what was queued was dropped, not delivered
    assert tracker.queued_in_streams == 3.5 * per_stream < tracker.low_threshold
    for download in downloads[1:] + [normal]:
        assert download.circuit.state is CircuitState.OPEN and not download.stream.ended
    normal.receive_cells(100)
    assert normal.sink.length == 300 * RELAY_DATA_LEN
    downloads[1].stream.resume_delivery()
    assert downloads[1].sink.length == 100 * RELAY_DATA_LEN and tracker.queued_in_streams == 2.5 * per_stream


def test_the_oom_handler_goes_on_until_the_total_is_under_ninety_percent():
    clock = Clock()
    per_stream = 100 * RELAY_DATA_LEN
    in_links = [0]
    tracker = MemoryTracker(max_bytes=4 * per_stream, clock=clock, queued_in_links=lambda: in_links[0])
    downloads = [Download(tracker) for _ in range(4)]
    for download in downloads[:3]:
        clock.now += 1
        download.receive_cells(100)
    # 471 cells' worth against a limit of 400: 111 must go to get under 360, more than the oldest holds.
    in_links[0] = 170 * RELAY_DATA_LEN
    downloads[3].receive_cells(1)
    assert [d.circuit.state for d in downloads] == [CircuitState.CLOSED] * 2 + [CircuitState.OPEN] * 2
    assert tracker.circuits_closed == 2


def test_the_links_queues_count_toward_the_limit():
    tracker = MemoryTracker(max_bytes=100 * RELAY_DATA_LEN, queued_in_links=lambda: 60 * RELAY_DATA_LEN)
    download = Download(tracker)
    download.receive_cells(39)
    assert download.circuit.state is CircuitState.OPEN
    download.receive_cells(1)  # 40 queued here and 60 in the links
    assert download.circuit.state is CircuitState.CLOSED


def test_a_stream_waiting_for_a_circuit_is_never_a_victim():
    tracker = MemoryTracker(max_bytes=1000)
    waiting = Stream(CollectingSink(), "example.com", 80, account=tracker)
    waiting.write(b"w" * 1500)  # optimistic data, no circuit yet
    assert tracker.queued_in_streams == 1500 and not waiting.ended
    download = Download(tracker)
    download.receive_cells(1)
    assert download.circuit.state is CircuitState.CLOSED and not waiting.ended


def test_outbound_data_waiting_for_the_window_counts_and_ages_too():
    clock = Clock()
    tracker = MemoryTracker(max_bytes=600 * RELAY_DATA_LEN, clock=clock)
    upload, download = Download(tracker), Download(tracker)
    upload.stream.resume_delivery()
    for _ in range(600):  # 500 go out, the stream window is then spent: 100 cells' worth wait
        upload.stream.write(b"u" * RELAY_DATA_LEN)
    assert tracker.queued_in_streams == 100 * RELAY_DATA_LEN
    clock.now += 5
    download.receive_cells(250)
    assert tracker.queued_in_streams == 350 * RELAY_DATA_LEN
    download.receive_cells(250)
    # The upload's data waits since the start: the older, although the download holds more.
    assert upload.circuit.state is CircuitState.CLOSED and download.circuit.state is CircuitState.OPEN
    assert tracker.queued_in_streams == 500 * RELAY_DATA_LEN
