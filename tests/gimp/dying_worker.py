"""A stand-in "interpreter" for the plug-in settings: runs the real worker, then kills it mid-run.

tests/test_gimp3.py copies it with a `#!<the venv's python>` first line, so sys.executable is
the real worker interpreter. It relays the worker's JSON lines until the second progress record
(the live preview layer exists by then), kills the worker with SIGKILL and dies the same way:
what a crash or the out-of-memory killer does to a real run.
"""

import os
import signal
import subprocess
import sys

worker = subprocess.Popen([sys.executable] + sys.argv[1:], stdout=subprocess.PIPE)
seen = 0
for line in worker.stdout:
    sys.stdout.buffer.write(line)
    sys.stdout.flush()
    seen += b'"progress"' in line
    if seen >= 2:
        print("dying-worker: killing the worker mid-run", file=sys.stderr, flush=True)
        worker.kill()
        worker.wait()
        os.kill(os.getpid(), signal.SIGKILL)
sys.exit(worker.wait())
