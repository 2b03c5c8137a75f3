"""The web page of xtuner-assistant: a Chat page and a Train page in one Streamlit app.

Start it with `xtuner-assistant web [MODEL] [--compare OTHER]` (which runs `streamlit run` on this
file; xtuner_assistant/serve/web.py). Chat (web/chat.py): the model beside another, each reply
streamed through the model's own chat template. Train (web/train.py): start a training run, watch its
progress, log and identity/leakage curves, stop and resume it, then chat with or publish the result.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

st.set_page_config(page_title="xtuner-assistant", layout="wide")
st.navigation([st.Page(HERE / "chat.py", title="Chat", icon=":material/chat:", default=True),
               st.Page(HERE / "train.py", title="Train", icon=":material/model_training:")]).run()
