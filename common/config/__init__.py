"""Config, above core: the typed params, the output paths they resolve to (layout), the stage entry (stage).

    fields        `param` (a field's help string and allowed range), ParamsError, FieldErrors
    params        Params: the top-level keys and each stage's section (TrainParams checks its models together)
    model_params  one model of train.models / train.students: ModelParams, ScorerParams, StageParams, ...
    loader        load_params, dotted.key=value overrides, parse_cli and describe (a stage's --help)
    params_file   writes a run's params.yaml from a preset (make competition: python -m common.config.params_file)
    layout        where each artifact lives under paths.output
    stage         run_stage, exit_with: a stage script's entry
"""
