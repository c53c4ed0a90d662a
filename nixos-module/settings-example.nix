# The example of `services.hyperhive.settings` (shown in the option's documentation). Every key is
# a real hive.toml key (README, "Configuration"); CI turns this into TOML and runs
# `hive check-config` on it, so the documented example cannot drift from what the daemon accepts.
{
  store.synchronous = "full";
  mailbox = {
    max_body_bytes = 131072;
    retention_days = 14;
  };
  approvals.deny_requires_note = true;
  build.timeout_seconds = 900;
  watcher.reconcile_seconds = 60;
  model = {
    anthropic_base_url = "https://api.anthropic.com";
    api_key_file = "/run/keys/anthropic";
  };
}
