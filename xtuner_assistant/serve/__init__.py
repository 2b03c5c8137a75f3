"""Talking to a trained model: the terminal chat (terminal) and the Streamlit web page (web)."""
