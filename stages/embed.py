"""embed: the frozen encoder's embedding of every candidate, computed once -> data/embeddings/
(train and rank read them; a resumable cache in .fractal/embed-cache keeps a killed run's work)"""
from fractal import params
from fractal.critic.embed import embed, save_embeddings
from fractal.critic.inputs import critic_input
from fractal.records import Generation, Problem, read_jsonl

p = params.load("train")
problem_of = {q.problem_id: q for q in read_jsonl("data/problems.jsonl", Problem)}
generations = read_jsonl("data/generations.jsonl", Generation)
items = [critic_input(problem_of[g.problem_id], g) for g in generations]
vectors = embed(items, p.backbone, p.max_length, p.prompt_tokens, p.embed_batch_size, ".fractal/embed-cache")
meta = {"backbone": p.backbone, "max_length": p.max_length, "prompt_tokens": p.prompt_tokens}
save_embeddings("data/embeddings", vectors, [(g.problem_id, g.sample) for g in generations], meta)
print(f"embed: {len(generations)} candidates x {vectors.shape[1]} dimensions ({p.backbone})")
