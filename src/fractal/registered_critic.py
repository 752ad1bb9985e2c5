"""The critic as MLflow registers it: a pyfunc model around critic/scorer.py.

Its own module because it subclasses mlflow.pyfunc.PythonModel, and `import mlflow.pyfunc`
takes seconds: fractal.tracking (imported by every `fractal run`) imports this only when it
registers a critic, and a loaded model imports it from the code logged with it.
"""
from __future__ import annotations

import warnings
from typing import Any

with warnings.catch_warnings():  # MLflow's own import warns about type hints of its classes
    warnings.simplefilter("ignore", UserWarning)
    import mlflow.pyfunc


class CriticModel(mlflow.pyfunc.PythonModel):
    """The registered critic: `mlflow.pyfunc.load_model("models:/critic/N").predict(df)` with
    one row per candidate (columns problem_id, sample, prompt, program; text optional)
    returns the critic's probability of passing for each row, in row order."""

    def load_context(self, context: Any) -> None:
        """Loads the critic, its encoder and every fold's head once: predict then only embeds
        and scores its rows (as one batch)."""
        from fractal.critic.scorer import load_critic

        self.critic = load_critic(context.artifacts["critic"])
        self.critic.load_models()


def _predict(self: CriticModel, context: Any, model_input: Any, params: dict | None = None) -> Any:
    """All rows in one Critic.score call: each problem's prompt and each distinct program are embedded once,
    in batches by length, and each fold's head scores its problems in one pass."""
    import numpy as np

    from fractal.records import Generation, Problem

    rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
    problems: dict[str, Problem] = {}
    generations = []
    for r in rows:
        pid = str(r["problem_id"])
        problems.setdefault(pid, Problem(pid, "", "", r["prompt"], "", "", "", text=r.get("text") or ""))
        generations.append(Generation(pid, int(r["sample"]), "", r["program"], "", ""))
    scores = {(s.problem_id, s.sample): s.score for s in self.critic.score(list(problems.values()), generations)}
    return np.array([scores[g.problem_id, g.sample] for g in generations])


# Set after the class exists: MLflow inspects a predict defined in the class body for a
# type-hinted schema and warns on every import when it finds none.
CriticModel.predict = _predict
