import logging
import os
import sys

from engine.sender._process import main

code = main()
# Everything is settled and said (acknowledged, spooled or dead-lettered, each file fsynced;
# the exit line logged): skip the interpreter's teardown of every module and object, ~20 ms
# that the owner's close() -- and so every short `engine ingest` -- would wait for.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
