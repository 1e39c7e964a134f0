"""Logs under load stay readable (issue #18): whole lines, and repeated warnings rate-limited."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading

import pytest

from control_plane.config.load import parse_config
from control_plane.resources.listeners import access_log
from hapax import log_relay, logs
from hapax.log_relay import Lines, as_json_line

# ---------------------------------------------------------------- rate limit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limited(budget: int = 3, interval: float = 60.0) -> tuple[logging.Logger, list[logging.LogRecord], Clock]:
    """A logger whose handler keeps what passes the limit (summaries included)."""
    clock = Clock()
    kept: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = kept.append  # type: ignore[method-assign]
    limit = logs.RateLimit(budget=budget, interval=interval, clock=clock)
    limit.sink = handler.handle
    handler.addFilter(limit)
    logger = logging.getLogger(f"test.ratelimit.{id(kept)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, kept, clock


def _messages(kept: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage() for record in kept]


def test_identical_warnings_beyond_the_budget_are_suppressed_then_summarised_with_the_count():
    logger, kept, clock = _limited(budget=3, interval=60.0)
    for i in range(1000):
        logger.warning("provider answered with an error", extra={"request_id": str(i)})
    assert len(kept) == 3  # the budget, then nothing while the interval lasts
    clock.now += 60.0
    logger.warning("provider answered with an error", extra={"request_id": "next"})
    summary = kept[3]
    assert summary.getMessage() == "suppressed 997 similar messages"
    assert summary.suppressed == 997 and summary.similar_to == "provider answered with an error"  # type: ignore[attr-defined]
    assert summary.name == logger.name and summary.levelno == logging.WARNING
    assert kept[4].request_id == "next"  # type: ignore[attr-defined]


def test_the_kind_is_the_template_so_arguments_do_not_make_a_message_new():
    logger, kept, _ = _limited(budget=2)
    for i in range(10):
        logger.warning("attempt %d failed", i)
    assert _messages(kept) == ["attempt 0 failed", "attempt 1 failed"]


def test_different_messages_are_not_suppressed_by_each_other():
    logger, kept, _ = _limited(budget=2)
    for _ in range(5):
        logger.warning("one thing")
        logger.warning("another thing")
        logger.error("one thing")  # another level is another kind
    assert _messages(kept).count("one thing") == 4
    assert _messages(kept).count("another thing") == 2


def test_after_the_interval_messages_flow_again():
    logger, kept, clock = _limited(budget=2, interval=10.0)
    for _ in range(5):
        logger.warning("overloaded")
    clock.now += 9.9
    logger.warning("overloaded")
    assert _messages(kept) == ["overloaded"] * 2
    clock.now += 0.1
    for _ in range(2):
        logger.warning("overloaded")
    assert _messages(kept) == ["overloaded"] * 2 + ["suppressed 4 similar messages"] + ["overloaded"] * 2


def test_an_interval_that_held_nothing_back_says_nothing():
    logger, kept, clock = _limited(budget=2, interval=10.0)
    logger.warning("once")
    clock.now += 20
    logger.warning("once")
    assert _messages(kept) == ["once", "once"]


def test_another_record_closes_an_interval_that_is_over():
    logger, kept, clock = _limited(budget=1, interval=10.0)
    for _ in range(3):
        logger.warning("storm")
    clock.now += 10
    logger.info("something else")
    assert _messages(kept) == ["storm", "suppressed 2 similar messages", "something else"]


def test_records_under_warning_are_never_held_back():
    logger, kept, _ = _limited(budget=1)
    for _ in range(5):
        logger.info("request done")
        logger.debug("detail")
    assert len(kept) == 10


def test_flush_says_what_an_open_interval_held_back():
    logger, kept, _ = _limited(budget=1)
    for _ in range(4):
        logger.warning("storm")
    limit = logger.handlers[0].filters[0]
    assert isinstance(limit, logs.RateLimit)
    limit.flush()
    limit.flush()  # said once
    assert _messages(kept) == ["storm", "suppressed 3 similar messages"]


# ---------------------------------------------------------------- whole lines


def _read_all(fd: int, into: list[bytes]) -> None:
    while chunk := os.read(fd, 65536):
        into.append(chunk)


def test_a_line_writer_keeps_lines_longer_than_a_pipe_whole_across_threads():
    read_fd, write_fd = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(read_fd, got))
    reader.start()
    writer = logs.LineWriter(write_fd)
    # 200 KiB lines: far over PIPE_BUF, and over the pipe's whole buffer, so each takes several writes.
    lines = {name: json.dumps({"writer": name, "pad": name * 200_000}).encode() + b"\n" for name in "abcd"}

    def write(line: bytes) -> None:
        for _ in range(5):
            writer.write(line)

    threads = [threading.Thread(target=write, args=(line,)) for line in lines.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.close(write_fd)
    reader.join()
    os.close(read_fd)
    out = b"".join(got).split(b"\n")
    assert out[-1] == b""
    assert sorted(json.loads(line)["writer"] for line in out[:-1]) == sorted("abcd" * 5)


def test_setup_writes_each_record_and_each_summary_as_one_json_line():
    read_fd, write_fd = os.pipe()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("ext_proc", "INFO", "json", writer=logs.LineWriter(write_fd))
        log = logging.getLogger("ext_proc.test")
        for i in range(50):
            log.warning("provider answered with an error", extra={"status": 500, "request_id": str(i)})
        limit = root.handlers[0].filters[0]
        assert isinstance(limit, logs.RateLimit)
        limit.flush()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    os.close(write_fd)
    got: list[bytes] = []
    _read_all(read_fd, got)
    os.close(read_fd)
    entries = [json.loads(line) for line in b"".join(got).decode().splitlines()]
    assert [e["msg"] for e in entries] == ["provider answered with an error"] * 10 + ["suppressed 40 similar messages"]
    assert entries[-1]["suppressed"] == 40 and entries[-1]["component"] == "ext_proc"


ACCESS = b'{"component":"envoy","logger":"access","status":503,"request_id":"%d"}'


@pytest.mark.parametrize("size", [1, 7, 100, 4096])
def test_lines_are_whole_however_the_chunks_fall(size: int):
    stream = b"".join(ACCESS % i + b"\n" for i in range(200))
    lines = Lines()
    out = [line for start in range(0, len(stream), size) for line in lines.feed(stream[start:start + size])]
    assert out == [ACCESS % i for i in range(200)]
    assert lines.end() == []


def test_a_stream_that_ends_mid_line_gives_its_last_line_at_the_end():
    lines = Lines()
    assert lines.feed(b"one\ntw") == [b"one"]
    assert lines.end() == [b"tw"]


def test_an_overlong_line_is_cut_and_the_rest_of_it_dropped():
    lines = Lines(max_line=10)
    assert lines.feed(b"x" * 25) == [b"x" * 10]
    assert lines.feed(b"y" * 25) == []
    assert lines.feed(b"yy\nnext\n") == [b"next"]
    assert lines.feed(b"z" * 12 + b"\n") == [b"z" * 10]


def test_a_json_object_is_relayed_as_it_is():
    assert as_json_line(ACCESS % 1, "envoy") == ACCESS % 1 + b"\n"


@pytest.mark.parametrize("line", [
    b"Traceback (most recent call last):",
    # What the splice looked like: Envoy's own line inside an access-log line.
    b'{"component":"envoy","logger":"access","sta{"ts":"2026-12-04T20:27:16.129Z","level":"warning"}',
    b"[1, 2]",
    b"\xff\xfe not utf-8",
])
def test_anything_else_is_relayed_as_the_msg_of_one_json_object(line: bytes):
    out = as_json_line(line, "ext_proc")
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    entry = json.loads(out)
    assert entry["component"] == "ext_proc" and entry["logger"] == "output"
    assert entry["msg"] == line.decode(errors="replace")


async def test_relay_writes_every_line_whole_and_as_json():
    read_fd, write_fd = os.pipe()
    stream = asyncio.StreamReader()
    # Envoy's access log arrives in slices that end mid-line; a crash's traceback is plain text.
    data = b"".join(ACCESS % i + b"\n" for i in range(100)) + b"Traceback (most recent call last):\n  boom"
    for start in range(0, len(data), 333):
        stream.feed_data(data[start:start + 333])
    stream.feed_eof()
    await log_relay.relay(stream, logs.LineWriter(write_fd), "envoy", json_lines=True)
    os.close(write_fd)
    got: list[bytes] = []
    _read_all(read_fd, got)
    os.close(read_fd)
    entries = [json.loads(line) for line in b"".join(got).splitlines()]
    assert [e.get("request_id") for e in entries[:100]] == [str(i) for i in range(100)]
    assert [e["msg"] for e in entries[100:]] == ["Traceback (most recent call last):", "  boom"]


async def test_relay_keeps_reading_when_its_output_is_gone():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # writing now fails (EPIPE)
    stream = asyncio.StreamReader()
    stream.feed_data(b"".join(ACCESS % i + b"\n" for i in range(10)))
    stream.feed_eof()
    await log_relay.relay(stream, logs.LineWriter(write_fd), "envoy", json_lines=True)
    os.close(write_fd)
    assert stream.at_eof()


def test_envoys_access_log_goes_to_its_stdout_not_the_stderr_its_own_log_uses():
    config = parse_config("providers: {p: {type: openai, api_key: k, model: m}}\n")
    [logger] = access_log(config)
    assert logger.name == "envoy.access_loggers.stdout"
