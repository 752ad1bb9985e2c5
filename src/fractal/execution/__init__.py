"""The hard verifier: runs model-written candidates in a sandbox and labels them.

    labels = label_candidates(problems, generations, params)

See judge.py for how the verdict is kept out of the candidate's reach, isolation.py for
the sandbox, worker.py for what runs inside it.
"""
from fractal.execution.labeler import label_candidates

__all__ = ["label_candidates"]
