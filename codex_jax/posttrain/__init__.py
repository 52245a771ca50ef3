"""Post-training on top of a trained model: GRPO with rewards from running the code (:mod:`grpo`)."""
