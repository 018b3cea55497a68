# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_bgctl_global_optspecs
    string join \n addr= token-file= app= json timeout= h/help V/version
end

function __fish_bgctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_bgctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_bgctl_using_subcommand
    set -l cmd (__fish_bgctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c bgctl -n "__fish_bgctl_needs_command" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_needs_command" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_needs_command" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_needs_command" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_needs_command" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_needs_command" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_needs_command" -s V -l version -d 'Print version'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "status" -d 'Every app: live and standby color, upstream health, switches'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "switch" -d 'Make a color live (shows the plan and asks first)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "rollback" -d 'Switch back to the previous live color (same gates as switch)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "canary" -d 'Start a rollout of the standby color, step by step (asks first)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "weight" -d 'Hold the standby color at a share by hand (asks first)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "promote" -d 'Make the rollout\'s new color live now (asks first)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "abort" -d 'End the rollout: its color back to 0% (asks first)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "pause" -d 'Hold the rollout at its step (asks first)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "resume" -d 'Go on with a paused rollout; its step starts anew (asks first)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "history" -d 'The switch, rollout and deploy history of an app'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "deploy" -d 'Run the app\'s deploy steps against the STANDBY color, then wait until it is healthy. Never touches the live color; never asks'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "verify" -d 'Run the app\'s [[app.verify]] checks against the STANDBY color, through the proxy, and print each; exit 0 when all passed, 1 when one failed. Changes nothing'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "requests" -d 'The pending requests for a change, oldest first: made with bgctl request, by an assistant through bgctl mcp, or through the API'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "cluster" -d 'The bgproxy instances sharing this state through etcd ([cluster]): each one\'s applied revision, who leads, whether this one is connected'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "approve" -d 'Carry out a pending request (shows it and what it would do now, asks first). Needs the operator\'s token'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "deny" -d 'Drop a pending request (shows it, asks first); nothing changes'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "ask" -d 'Ask for a change (a pending request) that an operator carries out with bgctl approve. Moves no traffic; a requester\'s token may'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "mcp" -d 'Serve the Model Context Protocol on stdin/stdout, for AI assistants'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "reload" -d 'Reload the daemon\'s configuration file (validated first; a bad file changes nothing)'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "watch" -d 'Follow the daemon\'s events as they happen, one line each (switches, health, rollouts, analyses, deploys, requests, reloads); --json prints each event\'s JSON. Reconnects (resuming where it stopped) until interrupted'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "certs" -d 'Every certificate the TLS listeners serve: hosts, source (file or acme), expiry, and the last ACME error'
complete -c bgctl -n "__fish_bgctl_needs_command" -f -a "completions" -d 'Print shell completions'
complete -c bgctl -n "__fish_bgctl_using_subcommand status" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand status" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand status" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand status" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand status" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand status" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l emergency -d 'Skip the health gate: switch even if the target is not healthy'
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand switch" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l emergency -d 'Skip the health gate: switch even if the target is not healthy'
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l steps -d 'Its share at each step, increasing, ending at 100 [default: the app\'s [app.rollout] steps]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l interval -d 'Time at each step before its analysis, like 1m [default: the app\'s [app.rollout] step_interval]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l wait -d 'Follow the rollout to its end: exit 0 when the color is live, 1 when it was aborted or paused (Ctrl-C leaves it running)'
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l emergency -d 'Skip the health gate (and abort a deploy running on the color)'
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand canary" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l emergency -d 'Skip the health gate (and abort a deploy running on the color)'
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand weight" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l emergency -d 'Skip the health gate (and abort a deploy running on the color)'
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand promote" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand abort" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand pause" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -l reason -d 'Why, recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand resume" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand history" -l limit -d 'Show at most this many entries, newest last' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand history" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand history" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand history" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand history" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand history" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand history" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -l migrate -d 'Also run the steps marked `migrate`'
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -s v -l verbose -d 'Show every step\'s output as it runs (a failing step\'s output is always shown)'
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand deploy" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand verify" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand verify" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand verify" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand verify" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand verify" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand verify" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand requests" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand requests" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand requests" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand requests" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand requests" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand requests" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand cluster" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand cluster" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand cluster" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand cluster" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand cluster" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand cluster" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand approve" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -l reason -d 'Why, recorded in the audit log' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -s y -l yes -d 'Proceed without asking'
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand deny" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l reason -d 'Why, shown to whoever decides and recorded in the history' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l expect-generation -d 'Refuse the change (exit 1, plan_stale) unless the state is still at generation N, the `generation` of `bgctl status --json` you decided on [default: that of the status the plan was made from]' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l emergency -d 'Ask for it without the health gate'
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand ask" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c bgctl -n "__fish_bgctl_using_subcommand mcp" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand mcp" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand mcp" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand mcp" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand mcp" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand mcp" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c bgctl -n "__fish_bgctl_using_subcommand reload" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand reload" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand reload" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand reload" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand reload" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand reload" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand watch" -l count -d 'Stop after this many events' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand watch" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand watch" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand watch" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand watch" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand watch" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand watch" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand certs" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand certs" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand certs" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand certs" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand certs" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand certs" -s h -l help -d 'Print help'
complete -c bgctl -n "__fish_bgctl_using_subcommand completions" -l addr -d 'Control API address' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand completions" -l token-file -d 'File holding the bearer token for changes (BGCTL_TOKEN may hold the token itself)' -r -F
complete -c bgctl -n "__fish_bgctl_using_subcommand completions" -l app -d 'The app to act on; may be left out when only one app is configured' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand completions" -l timeout -d 'How long to wait for the API, like 10s or 500ms' -r
complete -c bgctl -n "__fish_bgctl_using_subcommand completions" -l json -d 'Print the API\'s JSON and nothing else'
complete -c bgctl -n "__fish_bgctl_using_subcommand completions" -s h -l help -d 'Print help'
