"""The one loader of the optional C modules: used when built and current, refused with a reason otherwise."""

from __future__ import annotations

import pytest

from ce_daemon import accelerators
from ce_daemon.logs import native
from ce_daemon.netskope import rawpages


def test_a_current_build_is_used() -> None:
    module, why = accelerators.load("ce_daemon.netskope._pages", rawpages.ABI)
    assert module is not None and why == "built"


def test_a_build_of_another_abi_is_refused_with_both_numbers() -> None:
    module, why = accelerators.load("ce_daemon.netskope._pages", rawpages.ABI + 1)
    assert module is None
    assert why == f"a stale build (ABI {rawpages.ABI}, expected {rawpages.ABI + 1}): reinstall the package"


def test_a_module_that_was_not_built_says_so() -> None:
    module, why = accelerators.load("ce_daemon._no_such_accelerator", 1)
    assert module is None and why.startswith("not built (") and "_no_such_accelerator" in why


def test_a_module_without_an_abi_is_refused() -> None:
    module, why = accelerators.load("ce_daemon.framing", 1)  # Python, not C: no ABI constant
    assert module is None and "ABI None" in why


def test_the_environment_turns_every_module_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_DAEMON_NATIVE", "0")
    assert accelerators.turned_off()
    assert accelerators.load("ce_daemon.netskope._pages", rawpages.ABI) == (
        None,
        "turned off (CE_DAEMON_NATIVE=0)",
    )
    monkeypatch.setenv("CE_DAEMON_NATIVE", "dicts")  # the C writer on parsed records: still on
    assert not accelerators.turned_off()


def test_the_three_modules_of_this_install_are_current() -> None:
    """This machine has a compiler: every accelerator the package ships was built from today's C."""
    assert native.STATE == "built"
    assert rawpages.SPLITTER_STATE == "built"
    from ce_daemon import framing

    assert framing.FRAMING_STATE == "built"
