# Runtime shared by every xtuner-assistant config: hooks, logging, checkpoints, seeds.
# Configs that inherit this override `default_hooks.checkpoint` etc. by plain dict merging.
_base_ = []  # first statement: tells mmengine this is a plain (non-lazy) config
# Types are registry names (strings), so the config xtuner dumps into the work dir reloads.
custom_imports = dict(imports=["xtuner_assistant"], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=100, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
# scalars.json in <work_dir>/<timestamp>/vis_data, which `xtuner-assistant eval` plots.
visualizer = dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend")])
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
