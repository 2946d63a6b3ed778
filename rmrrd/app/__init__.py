"""The application: the layers wired into programs.

``service`` is ``rmrrd run`` (one trio nursery: the embedded xenstored, the HTTP
listener, the xenstore client, the daemon, signals, sd_notify, reload); ``reload``
says what a SIGHUP changed; ``toolstack`` is the other side of the protocol (what a
toolstack and a guest do), used by ``rmrrd check``, the demo, the tests and the
benchmarks; ``demo`` plays the seed scenario.
"""
