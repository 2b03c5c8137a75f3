"""The Streamlit page of `xtuner-assistant web` (app.py). It ships inside the package as
`xtuner_assistant.web` (see pyproject.toml), so the page is found in any installation."""
