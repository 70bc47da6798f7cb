# bash completion for chatprovctl(1); plain bash, bash-completion's helpers not needed.
_chatprovctl()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}

    local i command=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --config | -c) ((i++)) ;;
            -*) ;;
            *) command=${COMP_WORDS[i]}; break ;;
        esac
    done

    case $prev in
        --config | -c)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
        --format)
            COMPREPLY=($(compgen -W 'json text' -- "$cur"))
            return ;;
        --status)
            COMPREPLY=($(compgen -W 'failed rejected' -- "$cur"))
            return ;;
        --code)
            COMPREPLY=($(compgen -W 'Forbidden NotFound BadRequest Conflict InvalidRequest
                OutcomeUnknown' -- "$cur"))
            return ;;
        --since | --limit | --interval | --tenant)
            COMPREPLY=()
            return ;;
    esac

    case $command in
        '')
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W '--config --version --help' -- "$cur"))
            else
                COMPREPLY=($(compgen -W 'plan status redrive' -- "$cur"))
            fi ;;
        plan)
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W '--format --from-topic' -- "$cur"))
            else
                compopt -o filenames 2>/dev/null
                COMPREPLY=($(compgen -f -- "$cur"))
            fi ;;
        status)
            COMPREPLY=($(compgen -W '--watch --interval' -- "$cur")) ;;
        redrive)
            COMPREPLY=($(compgen -W '--status --code --tenant --since --limit --dry-run' \
                -- "$cur")) ;;
    esac
}
complete -F _chatprovctl chatprovctl
