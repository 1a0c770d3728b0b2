"""Property: any mutation of config.example.yaml ends in exit 0 or 78, in bounded time and memory.

Mutations are made on the text (truncation, insertion of YAML syntax, control characters and known
hostile fragments, deletion, replaced lines) and on the tree (a value swapped for one of another
type, deep nesting, shared values that the dumper writes as anchors and aliases, keys removed). Each
example runs the code `ce-daemon check` runs, in process: it must load or raise `ConfigError`
(anything else is a traceback), render its problems without echoing a secret, within hypothesis's
per-example deadline and a tracemalloc peak. The hostile files that need a real memory limit (alias
bombs, a mebibyte of values, FIFOs) run in a child process in `test_config_inputs.py`.

The run is derandomized and kept to a few seconds; a longer search explores further along the
same sequence: ``HYPOTHESIS_MAX_EXAMPLES=3000 .venv/bin/pytest tests/test_config_fuzz.py``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ce_daemon.config.load import load_pipeline
from ce_daemon.errors import ConfigError
from ce_daemon.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
TREE: dict[str, Any] = yaml.safe_load(EXAMPLE)
ENV_SECRET = "env-secret-Q7x9"
ENV = {"NS_TOKEN": ENV_SECRET, "CREDENTIALS_DIRECTORY": "credentials"}
FILE_SECRET = "REPLACE-ME-placeholder"  # what every file in examples/secrets/ starts with
PEAK_LIMIT = 128 * 1024**2
EXAMPLES = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60"))

HOSTILE = [
    "&a [*a, *a]",
    "*undefined",
    "!!python/object:os.system {}",
    "!custom x",
    "!!binary '@@@'",
    "!!float x",
    "!!timestamp 2024-13-01",
    "!!set {a: null}",
    "{<<: *x}",
    "{<<: 5}",
    "? [a, b]\n: 1",
    "9" * 5000,
    "-0x" + "f" * 30,
    ".inf",
    "-.inf",
    ".nan",
    "{$env: NS_TOKEN}",
    "{$env: UNSET}",
    "{$file: /dev/zero}",
    "{$file: /dev/stdin}",
    "{$file: /}",
    "{$credential: x}",
    "{$credential: ../x}",
    '"{$env: NS_TOKEN}"',
    "${NS_TOKEN}",
    "[" * 100,
    "{a: " * 70,
    "\x00",
    "\x1b[31m",
    "\t",
    "\ufeff",
    '"\\0"',
    "---",
    "...",
    "%YAML 1.1\n---",
    "|\n  x",
    "- ",
    ": ",
    "0",
    "-1",
    "1e400",
    "99999999999999999999GiB",
    "9999-12-31T23:59:59-01:00",
    "0000-01-01",
]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.discover()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the example's `$file` secrets resolve, as they do beside the example."""
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(ROOT / "examples", folder / "examples")
    return folder


@pytest.fixture(scope="module")
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


# -- text mutations ---------------------------------------------------------------------------------

_fragments = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(
        alphabet=st.sampled_from(list("[]{}:,-?&*!|>'\"%@`#<=~ \n\t.$0aZ\x00\x07\x85\u2028")), max_size=12
    ),
    st.text(max_size=8),
)


@st.composite
def text_mutations(draw: st.DrawFn) -> str:
    text = EXAMPLE
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["insert", "delete", "truncate", "replace_line", "replace_value"]))
        at = draw(st.integers(0, len(text)))
        if operation == "insert":
            text = text[:at] + draw(_fragments) + text[at:]
        elif operation == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 200)) :]
        elif operation == "truncate":
            text = text[:at]
        else:
            lines = text.split("\n")
            index = draw(st.integers(0, len(lines) - 1))
            if operation == "replace_line":
                lines[index] = draw(_fragments)
            elif ":" in lines[index]:  # keep the key, change what it holds
                key = lines[index].split(":", 1)[0]
                lines[index] = f"{key}: {draw(_fragments)}"
            text = "\n".join(lines)
    return text


# -- tree mutations ---------------------------------------------------------------------------------


def _paths(value: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield loc
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        yield from _paths(child, (*loc, key))


PATHS = [loc for loc in _paths(TREE) if loc]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.sampled_from(["5m", "0", "0s", "-1s", "1d", "now", "9" * 30, "1e999", "64MiB", "json", "file"]),
    st.dictionaries(
        st.sampled_from(["$env", "$file", "$credential", "$envv"]), st.text(max_size=8), min_size=1
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _get(tree: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        tree = tree[part]
    return tree


@st.composite
def tree_mutations(draw: st.DrawFn) -> str:
    tree = copy.deepcopy(TREE)
    for _ in range(draw(st.integers(1, 3))):
        loc = draw(st.sampled_from(PATHS))
        try:
            parent, current = _get(tree, loc[:-1]), _get(tree, loc)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the way there
        operation = draw(st.sampled_from(["replace", "remove", "nest", "share"]))
        if operation == "replace":
            parent[loc[-1]] = draw(_values)
        elif operation == "remove":
            del parent[loc[-1]]
        elif operation == "nest":  # the same value, buried under levels of lists or mappings
            for _ in range(draw(st.integers(1, 80))):
                current = [current] if draw(st.booleans()) else {"k": current}
            parent[loc[-1]] = current
        else:  # written as an anchor and an alias by the dumper
            other = draw(st.sampled_from(PATHS))
            try:
                _get(tree, other[:-1])[other[-1]] = current
            except (KeyError, IndexError, TypeError):
                continue
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=draw(st.booleans()))


# -- the property -----------------------------------------------------------------------------------


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain: it traces every line
)
@given(text=st.one_of(text_mutations(), tree_mutations()))
def test_any_mutation_of_the_example_loads_or_is_refused_cleanly(
    text: str, workdir: Path, registry: Registry, traced: None
) -> None:
    """Exit 0 or 78 whatever the file holds: no other exception, no secret echoed, memory bounded."""
    path = workdir / "pipeline.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    tracemalloc.reset_peak()
    refusal: ConfigError | None = None
    try:
        load_pipeline(path, registry, environ=ENV)
    except ConfigError as exc:
        refusal = exc
    assert tracemalloc.get_traced_memory()[1] < PEAK_LIMIT
    if refusal is not None:
        output = refusal.render()
        assert refusal.problems, "a refusal names at least one problem"
        assert ENV_SECRET not in output
        assert FILE_SECRET not in output
