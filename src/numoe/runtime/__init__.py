"""The CPU runtime: what the machine is and how numoe runs on it.

- `topology`: NUMA nodes, CPUs, SMT siblings, what the process may use (sysfs).
- `machine`: the other machine facts (memory available, cache sizes, /proc fields).
- `numa`: the thread plan (logical nodes), the ``--numa`` policy, libnuma's status.
- `pool`: applying a plan to numoe's C++ thread pool and torch's threads.
- `memory`: node-placed buffers, page placement, prefault.
- `bandwidth`: the read-bandwidth probe a decode is measured against.
- `settings`: `Runtime`, the one object that carries the resolved run settings to
  ``numoe.models.load`` and from there to the layers and ops.
"""
