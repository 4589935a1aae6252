"""configs/best.py's recipe, distilled from a population of itself (fmnist_jax/distill.py).

The teacher is 5 seeds of the same recipe trained as one population, the ensemble of their
best checkpoints by validation; the student is the same CNN (241,546 parameters) whose loss is
0.1 x cross-entropy(labels) + 0.9 x 4^2 x KL(teacher || student) at temperature 4, with the
teacher's forward passes on each augmented batch (`on_the_fly`: the better students than
`precomputed`'s, at several times a plain step's cost on a CPU; measured in docs/recipe.md and
docs/performance.md, "Distillation"). Train the teacher first, then the student (its seeds:
one population, or one run each):

  python -m fmnist_jax.main --config configs/best.py --workdir runs/distill/teacher \\
      --config.population.members='(("run.seed", (0, 1, 2, 3, 4)),)'
  python -m fmnist_jax.main --config configs/distill.py --workdir runs/distill/student

Variant `b512_e150` (`--config configs/distill.py:b512_e150`): both at configs/best.py's
150-epoch variant (an accelerator's schedule; benchmarks/distill_accelerator.sh), its teacher in
runs/distill/teacher_b512_e150.
"""

from configs import best

# name -> the teacher's workdir (configs/best.py's variant of the same name, 5 seeds)
VARIANTS = {"": "runs/distill/teacher", "b512_e150": "runs/distill/teacher_b512_e150"}


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"configs/distill.py has no variant {variant!r}; its variants are "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  config = best.get_config(variant)
  config.distill.teacher = VARIANTS[variant]
  config.distill.temperature = 4.0
  config.distill.weight = 0.9
  config.distill.teacher_sees = "on_the_fly"
  return config
