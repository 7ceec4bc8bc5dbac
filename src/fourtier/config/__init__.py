"""params.yaml as typed, validated pydantic models: one module per group of sections, named by the stages that
read them (data, caption, text, model, train, runtime), and base.py with what they share and `load_params`."""
