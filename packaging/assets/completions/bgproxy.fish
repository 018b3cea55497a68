# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_bgproxy_global_optspecs
    string join \n c/config= t/check upgrade log-format= h/help V/version
end

function __fish_bgproxy_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_bgproxy_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_bgproxy_using_subcommand
    set -l cmd (__fish_bgproxy_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c bgproxy -n "__fish_bgproxy_needs_command" -s c -l config -d 'Configuration file' -r -F
complete -c bgproxy -n "__fish_bgproxy_needs_command" -l log-format -d 'Log format: text (default) or json; overrides `log.format`' -r
complete -c bgproxy -n "__fish_bgproxy_needs_command" -s t -l check -d 'Validate the configuration (and the state, token and TLS files), print what is wrong, and exit: 0 when valid, 1 otherwise'
complete -c bgproxy -n "__fish_bgproxy_needs_command" -l upgrade -d 'Take over the listening sockets of a running bgproxy (zero-downtime upgrade); the old process is then sent SIGQUIT'
complete -c bgproxy -n "__fish_bgproxy_needs_command" -s h -l help -d 'Print help'
complete -c bgproxy -n "__fish_bgproxy_needs_command" -s V -l version -d 'Print version'
complete -c bgproxy -n "__fish_bgproxy_needs_command" -f -a "demo" -d 'Run a self-contained demo on loopback: two sample backends and the proxy in front of them'
complete -c bgproxy -n "__fish_bgproxy_needs_command" -f -a "upgrade" -d 'Upgrade the running bgproxy to this binary without dropping a connection: start `bgproxy --upgrade` on the same configuration, send SIGQUIT to PID once the new process waits, exit when it holds the sockets. The unit\'s ExecReload (`systemctl reload bgproxy`)'
complete -c bgproxy -n "__fish_bgproxy_using_subcommand demo" -l dir -d 'Where the demo keeps its state' -r -F
complete -c bgproxy -n "__fish_bgproxy_using_subcommand demo" -s h -l help -d 'Print help'
complete -c bgproxy -n "__fish_bgproxy_using_subcommand upgrade" -l pid -d 'The running bgproxy (under systemd: $MAINPID)' -r
complete -c bgproxy -n "__fish_bgproxy_using_subcommand upgrade" -s h -l help -d 'Print help'
