#!/usr/bin/env python3
"""Fuzz the plan parser at scale: `parse_plan` must return a Plan or raise PlanError whose every
problem line is `fuzz.yml:LINE:COL: ...` (or the file-level `fuzz.yml: ...`); anything else is a
failure. A small subset of the cases is also written to a file and run through the real CLI
(`upgrader plan check FILE`), which must exit 0 or 2 and never print a traceback.

    .venv/bin/python tools/fuzz_plans.py [--cases 10000] [--seed 1]

The bulk of the cases comes from a seeded `random.Random` generator (fast, reproducible: the
same --seed gives the same cases); about a tenth comes from the hypothesis strategies of
tests/plan/test_plan_fuzz.py (data mutations of playbooks/freebsd7.yml), imported from there.

Case families: data mutations (dropped keys, unknown keys, mutated types, huge values), text
splices with YAML punctuation, binary junk, truncation, wrong encodings (latin-1, UTF-16/32 with
BOM, UTF-8 BOM), YAML bombs (anchors/aliases, merge keys), huge values (long strings, big ints,
deep nesting, oversized files), odd scalars (bad timestamps, floats, nulls).

Exit 0 if no failure, 1 if any (the reproducer of each distinct failure is printed as a bytes
repr, to paste into `parse_plan(<bytes>, "fuzz.yml")`).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from upgrader.errors import PlanError  # noqa: E402
from upgrader.plan import Plan, parse_plan  # noqa: E402
from upgrader.testing.plan_mutations import mutate, paths  # noqa: E402

FILENAME = "fuzz.yml"
# `fuzz.yml:12:3: key: message` or a file-level `fuzz.yml: message`
PROBLEM_RE = re.compile(r"^fuzz\.yml:(\d+:\d+: \S| \S)")

SEED_FILES = [ROOT / "playbooks" / "freebsd7.yml", ROOT / "playbooks" / "linux-debian.yml",
              ROOT / "tests" / "plan" / "fixtures" / "minimal.yml"]


def _seed_texts() -> list[str]:
    texts = [p.read_text() for p in SEED_FILES if p.is_file()]
    try:
        from upgrader.testing.scenario import FAKE_PLAN

        texts.append(FAKE_PLAN.format(world="/tmp/fuzz-world.json", keep="1h"))
    except ImportError:  # pragma: no cover
        pass
    return texts


SEEDS = _seed_texts()
SEED_DATA = [yaml.safe_load(t) for t in SEEDS]

# --------------------------------------------------------------------------------------------
# The hypothesis strategies of tests/plan/test_plan_fuzz.py (imported by path: tests/ is no package)
# --------------------------------------------------------------------------------------------


def _load_hypothesis_module() -> Any | None:
    path = ROOT / "tests" / "plan" / "test_plan_fuzz.py"
    try:
        spec = importlib.util.spec_from_file_location("_upgrader_test_plan_fuzz", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - hypothesis missing or the test moved: random cases only
        return None
    needed = ("junk", "ALL_PATHS", "PLAN_DATA")
    return module if all(hasattr(module, n) for n in needed) else None


# --------------------------------------------------------------------------------------------
# The seeded random generator
# --------------------------------------------------------------------------------------------

YAML_PUNCT = list(" \t\n:-[]{}&*!|>'\"#%@`,?yes0123abc\x00\x85\ufeff\u2028\r~")
NASTY_STRINGS = [
    "", " ", "yes please", "1h", "99999", "-1", "0x1F", "0o17", "1_000", "1e999", ".nan", ".inf", "~", "null",
    "/abs", "../../etc/passwd", "qemu:///system", "fake:///nope", "[", "{", "*a", "&a", "<<", "!!python/object:os.system",
    "{domain}", "{0}", "{", "}", "$(id)", "`id`", "a;rm -rf /", "line\nbreak", "tab\there", "\u202e", "\ud7ff",
    "é", "日本語", "\U0001f4a9", "2024-13-45", "2024-02-30 10:00:00", "25:61", "FREQ=NOPE", "FREQ=DAILY;COUNT=x",
    "Europe/Nowhere", "../UTC", "300.1.1.1/99", "ip_move", "mac_move", "(", "[a-", "*", "a" * 200,
]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 3 and r < 0.12:
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3 and r < 0.24:
        return {rng.choice(["k", "run", "reboot", "tcp", "name", "path", "x" * rng.randint(1, 9)]): _junk(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    choice = rng.randint(0, 9)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice([0, 1, -1, 22, 65535, 65536, 2**31, 2**63, -(2**70), 10**40])
    if choice == 3:
        return rng.choice([0.0, -0.5, 1.5, 1e308, float("inf"), float("-inf"), float("nan")])
    if choice in (4, 5, 6):
        return rng.choice(NASTY_STRINGS)
    if choice == 7:
        return "".join(rng.choice(YAML_PUNCT) for _ in range(rng.randint(0, 12)))
    if choice == 8:
        return "x" * rng.choice([1000, 70000, 300000])
    return rng.choice([[], {}, [None], {"": None}])


SEED_PATHS = [paths(d) for d in SEED_DATA]


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _copy(data: Any) -> Any:
    """deepcopy for plain YAML data, several times faster than copy.deepcopy."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def gen_data_mutation(rng: random.Random) -> bytes:
    i = rng.randrange(len(SEED_DATA))
    data = _copy(SEED_DATA[i])
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(SEED_PATHS[i])
        op = rng.choice(["drop", "drop", "replace", "replace", "swap_type", "swap_type", "unknown_key", "unknown_key", "huge"])
        value = _huge(rng) if op == "huge" else _junk(rng)
        try:
            data = mutate(data, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    text = yaml.dump(data, Dumper=_DUMPER, allow_unicode=True, sort_keys=rng.random() < 0.3, width=rng.choice([80, 10**6]))
    return text.encode("utf-8")


def _huge(rng: random.Random) -> Any:
    kind = rng.randint(0, 4)
    if kind == 0:  # rarely big: the pure-Python YAML scanner takes ~0.3 s per MiB
        return "é" * (rng.choice([2_000, 20_000]) if rng.random() < 0.9 else rng.choice([200_000, 600_000]))
    if kind == 1:
        return rng.choice([2**64, 10**100, -(10**300), 10**4000])
    if kind == 2:
        node: Any = "leaf"
        for _ in range(rng.choice([20, 60, 90])):  # yaml.safe_dump recurses: stay well under the limit
            node = [node] if rng.random() < 0.5 else {"k": node}
        return node
    if kind == 3:
        return [rng.choice(NASTY_STRINGS) for _ in range(rng.choice([10, 100, 1000]))]
    return {f"k{i}": i for i in range(rng.choice([10, 100, 1000]))}


def gen_text_splice(rng: random.Random) -> bytes:
    text = rng.choice(SEEDS)
    for _ in range(rng.randint(1, 5)):
        at = rng.randint(0, len(text))
        cut = rng.randint(0, 8)
        insert = "".join(rng.choice(YAML_PUNCT) for _ in range(rng.randint(0, 6)))
        text = text[:at] + insert + text[at + cut:]
    return text.encode("utf-8", "surrogatepass")


def gen_line_shuffle(rng: random.Random) -> bytes:
    lines = rng.choice(SEEDS).splitlines(keepends=True)
    op = rng.randint(0, 3)
    if op == 0 and lines:  # drop lines
        for _ in range(rng.randint(1, 5)):
            if lines:
                del lines[rng.randrange(len(lines))]
    elif op == 1 and lines:  # duplicate a line (duplicate keys)
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif op == 2 and lines:  # re-indent a line
        i = rng.randrange(len(lines))
        lines[i] = rng.choice(["", " ", "\t", "    ", "  - "]) + lines[i].lstrip()
    else:  # swap two lines
        if len(lines) > 1:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines).encode("utf-8")


def gen_binary(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(SEEDS).encode("utf-8"))
    kind = rng.randint(0, 2)
    if kind == 0:  # insert junk
        at = rng.randint(0, len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == 1:  # overwrite bytes
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    else:  # pure junk
        return rng.randbytes(rng.choice([0, 1, 16, 4096]))
    return bytes(data)


def gen_truncate(rng: random.Random) -> bytes:
    data = rng.choice(SEEDS).encode("utf-8")
    if rng.random() < 0.3:  # cut inside a multi-byte character
        data = ("description: caf" + "é" * 3 + "\n").encode() + data
        return data[: rng.choice([17, 18, 19, 20])]
    return data[: rng.randint(0, len(data))]


def gen_encoding(rng: random.Random) -> bytes:
    text = rng.choice(SEEDS)
    if rng.random() < 0.7:
        text = text.replace("description:", "description: Café Müller ñ", 1) + "# Grüße\n"
    enc = rng.choice(["latin-1", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "cp1252", "utf-8-sig+bom2"])
    if enc == "utf-8-sig+bom2":
        return b"\xef\xbb\xbf\xef\xbb\xbf" + text.encode()
    if enc == "utf-16-le":
        return b"\xff\xfe" + text.encode(enc)
    if enc == "utf-16-be":
        return b"\xfe\xff" + text.encode(enc)
    return text.encode(enc, "replace")


def gen_bomb(rng: random.Random) -> bytes:
    kind = rng.randint(0, 4)
    if kind == 0:  # billion laughs
        lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for i in range(1, rng.randint(2, 9)):
            prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
            lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
        return ("\n".join(lines) + "\n").encode()
    if kind == 1:  # an alias inside a real plan
        text = rng.choice(SEEDS)
        return text.replace("ssh:\n  prod:", "ssh:\n  prod: &p", 1).replace("  staging:", "  staging: *p\n  x:", 1).encode()
    if kind == 2:  # merge key
        return (rng.choice(SEEDS) + "\nbase: &b {x: 1}\nmore:\n  <<: *b\n").encode()
    if kind == 3:  # a recursive alias
        return b"a: &a [*a]\n"
    return rng.choice([b"&a a: 1\n", b"? &k [1]\n: *k\n", b"!!python/object/apply:os.system ['id']\n",
                       b"version: !!binary aGVsbG8=\n", b"version: !!set {a, b}\n", b"%YAML 1.1\n---\nversion: 1\n",
                       b"--- 1\n--- 2\n", b"...\n", b"---\n...\n"])


def gen_huge_text(rng: random.Random) -> bytes:
    kind = rng.randint(0, 7)
    if kind == 0:
        return b"version: " + b"1" * rng.choice([100, 4300, 4301, 20000]) + b"\n"
    if kind == 1:
        return b"a: " + b"[" * rng.choice([100, 1000, 50000]) + b"]" * 10
    if kind == 2:
        return b"".join(b" " * i + b"k:\n" for i in range(rng.choice([100, 600])))
    if kind == 3:  # just under / just over the 1 MiB limit (slow to scan: keep them rare)
        size = 1024 * 1024 + 1 if rng.random() < 0.5 else (1024 * 1024 - 100 if rng.random() < 0.2 else 100_000)
        return b"description: " + b"x" * size + b"\n"
    if kind == 4:
        return (rng.choice(SEEDS) + "\n" + "#" * (1024 * 1024)).encode()  # over the limit: refused unread
    if kind == 5:
        return b"keep_old_for: " + rng.choice([b"0x" + b"f" * 5000, b"0b" + b"1" * 20000, b"9" * 999 + b"d"]) + b"\n"
    if kind == 6:
        return ("{" * 5000 + "}" * 5000).encode()
    return b"- " * rng.choice([10, 3000]) + b"x\n"


def gen_odd_scalars(rng: random.Random) -> bytes:
    text = rng.choice(SEEDS)
    lines = text.splitlines()
    value_lines = [i for i, l in enumerate(lines) if re.match(r"^\s*[A-Za-z_]+: \S", l)]
    if not value_lines:
        return text.encode()
    i = rng.choice(value_lines)
    key = lines[i].split(":", 1)[0]
    odd = rng.choice(["2024-13-45", "2024-02-30", "2024-06-01 25:00:00", "2024-06-01T03:00:00+99:00", "1e999", ".nan",
                      "-.inf", "0o8", "0x", "~", "!!int 12", "!!str", "!!float x", "'unterminated", '"\\x"', '"\\uD800"',
                      "|", ">-", "@at", "`tick", "%pct", "!tag x", "&anchor x", "1:30", "0b2", "1_2_3", "+12", "00"])
    lines[i] = f"{key}: {odd}"
    return ("\n".join(lines) + "\n").encode()


GENERATORS: list[tuple[str, Callable[[random.Random], bytes], int]] = [
    ("data-mutation", gen_data_mutation, 30),
    ("text-splice", gen_text_splice, 20),
    ("line-edit", gen_line_shuffle, 8),
    ("binary", gen_binary, 8),
    ("truncate", gen_truncate, 8),
    ("encoding", gen_encoding, 6),
    ("bomb", gen_bomb, 5),
    ("huge", gen_huge_text, 5),
    ("odd-scalar", gen_odd_scalars, 10),
]

# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------


@dataclass
class Failure:
    family: str
    data: bytes
    error: str  # "ExcType: message" or "bad problem line: ..." or "CLI rc N: ..."

    @property
    def signature(self) -> str:
        return re.sub(r"\d+", "N", self.error.splitlines()[0])[:120]


@dataclass
class Summary:
    cases: int = 0
    valid: int = 0
    plan_errors: int = 0
    cli_runs: int = 0
    failures: list[Failure] = field(default_factory=list)
    by_family: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def distinct_failures(self) -> dict[str, Failure]:
        """The shortest reproducer of each distinct failure."""
        out: dict[str, Failure] = {}
        for f in self.failures:
            if f.signature not in out or len(f.data) < len(out[f.signature].data):
                out[f.signature] = f
        return out


def check_case(data: bytes) -> tuple[str, str | None]:
    """("valid" | "plan_error" | "failure", failure description)."""
    try:
        plan = parse_plan(data, FILENAME)
    except PlanError as exc:
        if not exc.problems:
            return "failure", "PlanError without problems"
        for problem in exc.problems:
            if not PROBLEM_RE.match(problem):
                return "failure", f"bad problem line: {problem[:300]!r}"
        return "plan_error", None
    except RecursionError:
        return "failure", "RecursionError"
    except Exception as exc:  # noqa: BLE001 - that is what we hunt
        return "failure", f"{type(exc).__name__}: {str(exc)[:300]}\n" + "".join(traceback.format_exc(limit=-3))
    if not isinstance(plan, Plan):
        return "failure", f"parse_plan returned {type(plan).__name__}"
    return "valid", None


def start_cli(data: bytes, workdir: Path) -> subprocess.Popen[bytes]:
    """Start `upgrader plan check` on the case in the background (it overlaps the in-process cases)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / FILENAME
    path.write_bytes(data)
    return subprocess.Popen(
        [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(workdir / "state"), "plan", "check", str(path)],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)},
    )


def finish_cli(proc: subprocess.Popen[bytes]) -> str | None:
    """Wait for a CLI run; a problem description, or None if it behaved (exit 0/2, no traceback)."""
    try:
        out_b, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return "CLI did not finish in 120 s"
    out = out_b.decode("utf-8", "replace")
    if proc.returncode not in (0, 2):
        return f"CLI rc {proc.returncode}: {out.strip()[:300]}"
    if "Traceback" in out:
        return f"CLI printed a traceback (rc {proc.returncode}): {out.strip()[:300]}"
    return None


def check_cli(data: bytes, workdir: Path) -> str | None:
    return finish_cli(start_cli(data, workdir))


def _family_for(index: int, rng: random.Random) -> tuple[str, Callable[[random.Random], bytes]]:
    names, gens, weights = zip(*GENERATORS)
    k = rng.choices(range(len(names)), weights=weights)[0]
    return names[k], gens[k]


def hypothesis_cases(count: int, seed: int) -> list[bytes]:
    """`count` data mutations drawn with the strategies of tests/plan/test_plan_fuzz.py."""
    module = _load_hypothesis_module()
    if module is None or count <= 0:
        return []
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    out: list[bytes] = []

    @hseed(seed)
    @settings(max_examples=count, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(mutations=st.lists(st.tuples(st.sampled_from(module.ALL_PATHS),
                                        st.sampled_from(["drop", "replace", "swap_type", "insert"]),
                                        module.junk), min_size=1, max_size=4))
    def collect(mutations: list[tuple[tuple[Any, ...], str, Any]]) -> None:
        data = copy.deepcopy(module.PLAN_DATA)
        for path, op, value in mutations:
            try:
                data = mutate(data, path, op, value)
            except (KeyError, IndexError, TypeError):
                continue
        out.append(yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass"))

    collect()
    return out[:count]


def fuzz(cases: int = 10_000, seed: int = 1, *, cli_runs: int | None = None, hypothesis_share: float = 0.1,
         progress: Callable[[str], None] | None = None) -> Summary:
    """Run `cases` cases (a `hypothesis_share` of them from hypothesis) and `cli_runs` of them (by
    default one case in 200, at most 50) through the CLI as well."""
    started = time.monotonic()
    rng = random.Random(seed)
    summary = Summary()
    n_hyp = int(cases * hypothesis_share)
    hyp = hypothesis_cases(n_hyp, seed)
    n_random = cases - len(hyp)
    if cli_runs is None:
        cli_runs = min(50, max(1, cases // 200))
    every = max(1, cases // max(cli_runs, 1)) if cli_runs else 0
    pending: tuple[subprocess.Popen[bytes], str, bytes] | None = None

    def settle(item: tuple[subprocess.Popen[bytes], str, bytes]) -> None:
        proc, fam, raw = item
        cli_problem = finish_cli(proc)
        if cli_problem is not None:
            summary.failures.append(Failure(fam + "/cli", raw, cli_problem))

    with tempfile.TemporaryDirectory(prefix="fuzz-plans-") as tmp:
        workdir = Path(tmp)
        for i in range(cases):
            if i < n_random:
                family, gen = _family_for(i, rng)
                data = gen(rng)
            else:
                family, data = "hypothesis", hyp[i - n_random]
            summary.cases += 1
            summary.by_family[family] = summary.by_family.get(family, 0) + 1
            outcome, problem = check_case(data)
            if outcome == "valid":
                summary.valid += 1
            elif outcome == "plan_error":
                summary.plan_errors += 1
            else:
                summary.failures.append(Failure(family, data, problem or "?"))
            if every and i % every == every // 2 and summary.cli_runs < cli_runs:
                if pending is not None:
                    settle(pending)
                summary.cli_runs += 1
                pending = (start_cli(data, workdir / f"cli{summary.cli_runs}"), family, data)
            if progress and (i + 1) % 1000 == 0:
                progress(f"{i + 1}/{cases} cases, {len(summary.failures)} failure(s), {time.monotonic() - started:.0f}s")
        if pending is not None:
            settle(pending)
    summary.seconds = time.monotonic() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1); same seed, same cases")
    parser.add_argument("--cli-runs", type=int, default=None, help="CLI subprocess runs (default cases/200, max 50)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    s = fuzz(args.cases, args.seed, cli_runs=args.cli_runs, progress=progress)
    distinct = s.distinct_failures
    for sig, f in distinct.items():
        print(f"\nFAILURE [{f.family}] {sig}")
        print(f"  {f.error.strip()}".replace("\n", "\n  "))
        shown = f.data if len(f.data) <= 2000 else f.data[:2000]
        print(f"  reproducer ({len(f.data)} bytes{', first 2000 shown' if len(f.data) > 2000 else ''}):")
        print(f"  parse_plan({shown!r}, {FILENAME!r})")
    families = ", ".join(f"{k} {v}" for k, v in sorted(s.by_family.items()))
    print(f"\ncases {s.cases}  valid plans {s.valid}  PlanErrors {s.plan_errors}  failures {len(s.failures)} "
          f"({len(distinct)} distinct)  CLI runs {s.cli_runs}  seconds {s.seconds:.1f}  (seed {args.seed})")
    print(f"families: {families}")
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(main())
