"""Optimizer step counts are part of the step (issue 17, item 5).

Adam's bias correction and Adagrad's ``lr_decay`` depend on the step count. Concurrent ``step`` /
``step_bags`` calls on one optimizer must each take a count of their own, and an exception raised
by a signal handler (Ctrl-C) must never separate an update from its count: the state after any
sequence of (possibly interrupted) calls equals that of ``state["step"]`` uninterrupted steps.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from embtab import optim

from test_concurrency import run_threads

MAKERS = {
    "adam": lambda t: optim.Adam(t, lr=0.01, betas=(0.5, 0.75)),
    "adagrad_lr_decay": lambda t: optim.Adagrad(t, lr=0.5, lr_decay=0.25),
}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", list(MAKERS))
def test_concurrent_steps_count_every_step(name, fused):
    rows, dim, threads, calls = 3000, 8, 4, 25
    ids = np.arange(rows)
    grads = np.ones((rows, dim))

    def one_step(opt):
        if fused:
            opt.step_bags(np.ones((rows, dim)), ids.reshape(rows, 1))
        else:
            opt.step(ids, grads)

    opt = MAKERS[name](np.zeros((rows, dim)))
    run_threads(lambda _: [one_step(opt) for _ in range(calls)], threads)
    # Every call has the same gradient, so the order of the steps does not matter: the result is
    # that of threads * calls steps in a row, with each bias correction / decayed rate used once.
    ref = MAKERS[name](np.zeros((rows, dim)))
    for _ in range(threads * calls):
        one_step(ref)
    assert int(opt.state["step"]) == threads * calls
    np.testing.assert_array_equal(opt.table, ref.table)
    for key, value in ref.state.items():
        np.testing.assert_array_equal(opt.state[key], value)


def test_step_count_is_a_0d_int64_array_and_survives_plain_ints():
    opt = optim.Adam(np.zeros((10, 4)), lr=0.1)
    assert isinstance(opt.state["step"], np.ndarray) and opt.state["step"].dtype == np.int64
    assert opt.state["step"].shape == ()
    opt.step(np.array([1]), np.ones((1, 4)))
    assert opt.state["step"] == 1
    opt.state["step"] = 7  # set by hand (or loaded from an older checkpoint) as an int
    ref = optim.Adam(np.zeros((10, 4)), lr=0.1)
    ref.state["step"][...] = 7
    for o in (opt, ref):
        o.table[...] = 0
        for key in ("exp_avg", "exp_avg_sq"):
            o.state[key][...] = 0
        o.step(np.array([1]), np.ones((1, 4)))
    assert opt.state["step"] == 8 and isinstance(opt.state["step"], np.ndarray)
    np.testing.assert_array_equal(opt.table, ref.table)


def test_bad_step_count_is_refused_before_anything_changes():
    from embtab import _core

    table = np.zeros((10, 4))
    m, v = np.zeros_like(table), np.zeros_like(table)
    args = ("adam", table, m, v, np.array([1]), np.ones((1, 4)))
    for step, error in [(np.zeros((), np.int32), TypeError), (np.zeros(1, np.int64), ValueError),
                        (np.zeros((), np.float64), TypeError), (5, TypeError)]:
        with pytest.raises(error, match=r"state\['step'\]"):
            _core.optim_step(*args, lr=0.1, eps=1e-8, beta1=0.9, beta2=0.999, step=step)
    frozen = np.zeros((), np.int64)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _core.optim_step(*args, lr=0.1, eps=1e-8, beta1=0.9, beta2=0.999, step=frozen)
    assert not table.any() and not m.any() and not v.any()


# A timer thread raises an exception in the main thread (through a signal handler, as Ctrl-C does)
# at random moments of a loop of long steps; whatever was interrupted, the optimizer must be in the
# state of exactly state["step"] uninterrupted steps.
INTERRUPTED = textwrap.dedent(
    """
    import signal, sys, threading, time
    import numpy as np
    import embtab
    from embtab import optim

    name = sys.argv[1]
    make = {
        "adam": lambda t: optim.Adam(t, lr=0.01, betas=(0.5, 0.75)),
        "adagrad_lr_decay": lambda t: optim.Adagrad(t, lr=0.5, lr_decay=0.25),
    }[name]

    class Interrupt(Exception):
        pass

    def handler(signum, frame):
        raise Interrupt()

    signal.signal(signal.SIGUSR1, handler)
    rows, dim, n = 20_000, 16, 200_000
    ids = np.random.default_rng(0).integers(0, rows, n)
    grads = np.ones((n, dim))
    opt = make(np.zeros((rows, dim)))
    stop = threading.Event()
    main = threading.main_thread().ident
    rng = np.random.default_rng(1)

    def interrupter():
        while not stop.wait(float(rng.uniform(0.001, 0.02))):
            signal.pthread_kill(main, signal.SIGUSR1)

    thread = threading.Thread(target=interrupter)
    thread.start()
    interrupts = 0
    deadline = time.monotonic() + 2
    try:
        while time.monotonic() < deadline:
            try:
                opt.step(ids, grads)
            except Interrupt:
                interrupts += 1
    finally:
        stop.set()
        while True:  # a last signal may still be on its way
            try:
                thread.join()
                time.sleep(0.05)
                break
            except Interrupt:
                interrupts += 1
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    count = int(opt.state["step"])
    ref = make(np.zeros((rows, dim)))
    for _ in range(count):
        ref.step(ids, grads)
    same = np.array_equal(opt.table, ref.table) and all(
        np.array_equal(opt.state[k], v) for k, v in ref.state.items())
    print(count, interrupts, "consistent" if same else "INCONSISTENT")
    """
)


@pytest.mark.parametrize("name", list(MAKERS))
def test_interrupted_steps_never_split_update_and_count(name):
    result = subprocess.run([sys.executable, "-c", INTERRUPTED, name], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    count, interrupts, verdict = result.stdout.split()
    assert int(interrupts) > 0, "the test interrupted nothing"
    assert verdict == "consistent", f"{count} steps counted, {interrupts} interrupts: state of another count"
