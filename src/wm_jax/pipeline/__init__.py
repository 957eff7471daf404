"""The experiment, stage by stage: settings (`config`, `presets`), the stages collect → V →
encode → M → C → evaluate → report (`stages`, `report`, `probe`), the run folder and its
records (`run_folder`), and the commands built on them (`experiment`, `iterative` for §5,
`sweep` for Table 2, `evaluate`, `play`, `agents`; `cli` for their shared error handling).
`python -m wm_jax.<command>` runs each command."""
