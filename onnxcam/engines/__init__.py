"""Engines that run `explain_images`' per-batch pipeline elsewhere than this process (see engines.ray)."""
