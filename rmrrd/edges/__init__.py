"""The edges: what connects rmrrd to its operator and its host, beside the daemon.

Configuration files, logging for journald, Prometheus metrics and the HTTP listener,
sd_notify, this host's inventory from firmware and sysfs, peer hosts' inventories
over HTTP, garbage-collection pauses.  The daemon never imports these (it is given
settings and an observer, :mod:`rmrrd.daemon.settings`); :mod:`rmrrd.app` wires them
together.
"""
