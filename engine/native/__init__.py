"""The optional C accelerator (``_native``, built from the C sources here) and its selector.

The C code runs in whichever process calls it: the ring writer, encoder and call handle in
the user's process, record parsing and splicing in the sender.
May import: nothing else of engine.
"""
