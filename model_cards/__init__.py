"""Model-card templates (Jinja, rendered through huggingface_hub.ModelCard), kept at the top of the
repository where the project layout promises them and shipped inside the package as `maskae.model_cards`
(one mapping in pyproject.toml)."""
