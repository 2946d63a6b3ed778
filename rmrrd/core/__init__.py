"""The pure core: firmware tables and inventories in, layouts, verdicts and replies out.

No I/O, no clock, no trio: each function takes values and returns values (time,
where it matters, is passed in), so every rule is tested on its own, with hypothesis
for the invariants.  Ranges are half-open integers inside and inclusive ``START-END``
strings at the edges.  Reading one inventory file (``inventory_yaml``) is the only
file access, and it is the caller's choice.
"""
