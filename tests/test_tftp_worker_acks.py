"""serve's side of the TFTP worker protocol, against a stand-in worker process that answers a
reload late: the answer to a reload that timed out must not pass for the next one's."""

import sys
import textwrap

from provisioner.servers.tftp.workers import Workers

# Answers its first reload after 1.5 s (serve has given up after 0.5 s and sent the second
# SIGHUP by then), the second 0.5 s later, and only then marks that second reload done.
LATE_WORKER = textwrap.dedent("""
    import signal, sys, time
    hups = 0
    def hup(*_):
        global hups
        hups += 1
    signal.signal(signal.SIGHUP, hup)
    print("ready", flush=True)
    reloaded = 0
    while True:
        time.sleep(0.02)
        if hups > reloaded:
            first = reloaded == 0
            reloaded = hups
            time.sleep(1.5 if first else 0.5)
            if not first:
                open(sys.argv[1], "w").close()
            print(f"reloaded {reloaded}", flush=True)
""")


def test_a_late_reload_answer_is_not_taken_for_the_next(tmp_path, caplog):
    script, marker = tmp_path / "worker.py", tmp_path / "second-reload-done"
    script.write_text(LATE_WORKER)
    workers = Workers([sys.executable, str(script), str(marker)], 1, ack_timeout=0.5)
    workers.start(on_death=lambda reason: None)
    try:
        workers.reload()
        assert any("did not say 'reloaded'" in str(r.kv["error"]) for r in caplog.records)
        caplog.clear()
        workers.ack_timeout = 10
        workers.reload()
        assert marker.exists()  # "reloaded 1" came in first and was passed over
        assert not caplog.records
    finally:
        workers.stop()
    assert workers.procs[0].returncode is not None
