"""Property-based fuzzing of the text parsers clients reach: the Dockerfile parser (runtime/images/dockerfile.py),
image references (runtime/images/reference.py), the filters parameter and the time values of ``until``.

Each either gives a result or refuses with ``InvalidParameter`` (a 400), never another exception; references that
parse round-trip through their canonical and familiar forms and never carry a control character."""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from machines.runtime import timefmt
from machines.runtime.errors import InvalidParameter
from machines.runtime.filters import Args
from machines.runtime.images import dockerfile, reference

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

INSTRUCTION = st.sampled_from(["FROM", "RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "ENV", "ARG", "LABEL", "EXPOSE",
                               "WORKDIR", "USER", "VOLUME", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD",
                               "MAINTAINER", "from", "NOPE", "#", "# escape=`", "# escape=x"])
ARGUMENT = st.one_of(st.text(max_size=40), st.sampled_from([
    '["sh", "-c", "true"]', '["a", 1]', "[" * 3000, '["unterminated', "--from=0 a b", "--chown=1:1 a b",
    "--interval=-1s CMD true", "--interval=1x CMD true", "NONE", "CMD [\"x\"]", "a=b c=\"d e\"", "$X ${Y:-z}",
    "${", "\\", "`", "AS", "image AS", "image AS name"]))
LINE = st.one_of(st.tuples(INSTRUCTION, ARGUMENT).map(" ".join), st.text(max_size=40))
ENDING = st.sampled_from(["\n", "\\\n", "`\n", "\r\n", "\n\n"])


@FUZZ
@given(st.lists(st.tuples(LINE, ENDING).map("".join), max_size=12))
def test_dockerfile_parser_gives_instructions_or_a_clear_error(lines: list) -> None:
    text = "".join(lines)
    try:
        instructions = dockerfile.parse(text)
    except InvalidParameter:
        return
    assert instructions
    for ins in instructions:
        assert ins.cmd == ins.cmd.upper() and ins.cmd in dockerfile.KNOWN
        assert isinstance(ins.args, list) and all(isinstance(arg, str) for arg in ins.args)
        if ins.cmd == "HEALTHCHECK":
            try:
                dockerfile.apply_config({}, ins, {})
            except InvalidParameter:
                pass


@FUZZ
@given(st.text(max_size=120))
def test_dockerfile_parser_on_any_text(text: str) -> None:
    try:
        dockerfile.parse(text)
    except InvalidParameter:
        pass


REF_ALPHABET = string.ascii_letters + string.digits + "._-/:@+" + "\n\t \u00e9\u0661"
REF_TEXT = st.one_of(st.text(REF_ALPHABET, max_size=80), st.sampled_from([
    "alpine", "alpine\n", "Alpine", "library/alpine:latest", "docker.io/library/alpine", "index.docker.io/x",
    "localhost:5000/app:1.0", "[::1]:5000/app", "a" * 256, "sha256:" + "a" * 64, "a" * 64,
    "app@sha256:" + "0" * 64, "app:t\u00e9g", "app:\u0661", "a//b", "a/", ":tag", "@sha256:x"]))


@FUZZ
@given(REF_TEXT)
def test_references_parse_and_round_trip_or_are_refused(text: str) -> None:
    try:
        ref = reference.parse(text)
    except InvalidParameter:
        return
    canonical = str(ref)
    assert all(ch.isascii() and ch.isprintable() and not ch.isspace() for ch in canonical), canonical
    assert str(reference.parse(canonical)) == canonical
    assert str(reference.parse(ref.familiar())) == canonical
    assert ref.tag is not None or ref.digest is not None  # the default tag was added


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                   max_size=3), max_leaves=15))
def test_filters_parse_or_refuse_with_mobys_message(value: object) -> None:
    try:
        args = Args.from_json(json.dumps(value))
    except InvalidParameter as exc:
        assert str(exc).startswith("invalid filter")
        return
    for key, values in args.items():
        assert isinstance(key, str) and all(isinstance(v, str) for v in values)
    try:
        args.validate(["label", "until"])
        args.until(0)
    except InvalidParameter:
        pass


GO_DURATION = st.lists(st.tuples(st.decimals(0, 10 ** 6, places=3, allow_nan=False, allow_infinity=False),
                                 st.sampled_from(["ns", "us", "\u00b5s", "ms", "s", "m", "h"])),
                       min_size=1, max_size=4).map(lambda parts: "".join("{}{}".format(*part) for part in parts))


@FUZZ
@given(st.one_of(GO_DURATION, st.text(max_size=30), st.sampled_from([
    "0", "-1h", "24h", "1.5h", "2024-01-02", "2024-01-02T03", "2024-01-02T03:04", "2024-01-02T03:04:05",
    "2024-01-02T03:04:05.123Z", "2024-01-02T03:04:05+02:00", "2024-13-02", "1700000000", "1700000000.5",
    "1700000000.", ".5", "1e9", "\u0661\u0662"])))
def test_until_values_are_a_moment_or_a_clear_error(value: str) -> None:
    try:
        moment = timefmt.moment(value, 1_700_000_000.0)
    except InvalidParameter:
        return
    assert isinstance(moment, float)


@FUZZ
@given(GO_DURATION)
def test_go_durations_count_back_from_the_reference(value: str) -> None:
    seconds = timefmt.parse_go_duration(value)
    assume(seconds < 10 ** 9)
    assert abs(timefmt.moment(value, 2_000_000_000.0) - (2_000_000_000 - seconds)) <= 1.0


@FUZZ
@given(st.integers(-(10 ** 15), 10 ** 15))
def test_go_duration_strings_read_back_as_the_same_duration(ns: int) -> None:
    text = timefmt.format_go_duration(ns)
    assert abs(timefmt.parse_go_duration(text) * 1e9 - ns) <= max(1.0, abs(ns) * 1e-9), text
