//! The updater's stages (SPEC §6). Empty until the update pipeline lands.
