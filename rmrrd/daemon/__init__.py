"""The daemon: xenstore events in, answers, replies and verdicts out.

- ``lifecycle``: one domain's pure state machine (states, events, effects).
- ``owner``: the task that owns a domain: its mailbox, its effects carried out.
- ``domains``: every known domain and its owner; reconciliation.
- ``setup``: reading a setup request and writing its answer, in one transaction.
- ``toolstack``: answering toolstack checks in the order of the domain they name.
- ``watches``: the watches on one connection, what each feeds, the shutdown.
- ``settings``: what the daemon is given: settings, and an observer for metrics.
"""
