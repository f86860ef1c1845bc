"""One module per `jaxtune` subcommand; each defines its own absl flags."""
