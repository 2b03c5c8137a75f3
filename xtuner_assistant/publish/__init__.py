"""`xtuner-assistant publish`: the merged model as a git + Git LFS model repo with its model card
(model_repo.py, model_card.py), and a Gradio app repo that fetches it (app_bundle.py), pushed with
git (git_repo.py) or the platform's SDK (openxlab.py, which runs openxlab_runner.py in the SDK's own
environment)."""
