"""The recipes: scripts in a clone (`accelerate launch recipes/dpo.py --config ...`), and the package
`trl_ext.recipes` in the wheel, which the `trl-ext` command runs (`trl-ext dpo --config dpo/tiny-cpu`)."""
