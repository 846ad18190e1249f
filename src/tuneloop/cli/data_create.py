"""Commands of this group register on the apps in `tuneloop.cli.apps`."""
