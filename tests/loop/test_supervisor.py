"""`cai worker --processes N`'s supervisor on real child processes: one that exits is started again, and a stop
ends them all."""

import sys
import threading

from loop.service.supervisor import supervise


def test_an_exited_worker_is_started_again_and_a_stop_ends_all(tmp_path):
    # Each child appends a line when it starts; the first one exits at once, later ones wait to be stopped.
    log = tmp_path / "starts"
    code = (f"import pathlib, sys, time; p = pathlib.Path({str(log)!r}); n = len(p.read_text().splitlines()) "
            "if p.exists() else 0; p.open('a').write('x\\n'); sys.exit(3) if n == 0 else time.sleep(60)")
    stop, said = threading.Event(), []
    runner = threading.Thread(target=supervise, args=([sys.executable, "-c", code], 2, stop, said.append, 0.1))
    runner.start()
    for _ in range(200):
        if said and log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        stop.wait(0.05)
    stop.set()
    runner.join(timeout=40)
    assert not runner.is_alive()
    assert len(log.read_text().splitlines()) >= 3  # two started, the one that exited started again
    assert any("exited (3); starting another" in line for line in said)
