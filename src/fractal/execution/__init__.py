"""The hard verifier: runs model-written candidates in a sandbox and labels them.

    labels = label_candidates(problems, generations, params)   # one Label per generation, in order

How it fits together:
- labeler.py: dedupes programs, looks labels up in the cache (cache.py), records each
  problem's test calls (judge.plan_tests), runs the rest on a pool of warm sandboxed
  workers (pool.py), judges what comes back (judge.judge), with a progress bar.
- isolation.py: the bubblewrap sandbox each worker lives in (PID/net/IPC/UTS namespaces,
  a filesystem view of the system's libraries and the interpreter only, private
  size-limited /tmp and /dev/shm); refuses to run without it unless label.isolation is
  `none`, and the probe that says why a worker cannot start.
- worker.py: the worker: a warden, PID 1 of its sandbox, and a zygote, forked once before
  any task, that forks one child per candidate with fresh pipes and fresh limits from the
  worker's own record; the warden enforces wall time, user CPU time and the memory of the
  candidate's whole process tree, kills every process the candidate made, removes its
  files and System V IPC objects, and checks after each candidate that nothing of the
  worker was changed. A candidate's label depends on it alone: one that tampers with or
  kills its worker is charged, the worker replaced (pool.py), and no other candidate runs
  on a changed worker. Where that stops: tampering is noticed and undone, not prevented
  (candidates share the worker's uid), and memory is sampled every 20 ms.
- pool.py: the warm workers, replaced as often as they break; a candidate that breaks a
  worker runs once more on a fresh one before it is charged.
- judge.py: why no candidate can forge a pass - the tests run in the labeler against the
  plain values the candidate returned - and the limits of that choice.
- wire.py: how values and messages cross between the labeler and the sandbox: the
  plain-data encoding and decoding, and the frames; the worker gets its source, so both
  sides share one definition.
"""
from fractal.execution.labeler import label_candidates, problem_statuses

__all__ = ["label_candidates", "problem_statuses"]
