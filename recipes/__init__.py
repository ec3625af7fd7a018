"""Training recipes (YAML), kept at the top of the repository where users look for them and shipped inside
the package as `maskae.recipes`, so that `maskae adapt` finds its defaults in an installed copy too."""
