"""Training with XTuner: config settings (settings) and builders (recipe), packed fine-tuning with
attention kept inside each conversation (packed_finetune, document_attention), XTuner's own tools
with their real exit status (xtuner_tools), what a run leaves (work_dir), and export: checkpoint ->
LoRA adapter -> checked merged model."""
