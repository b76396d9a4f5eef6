"""The composition root: settings, the application factory, serving, and first-start set-up."""
