#!/bin/sh
# jacamar-rs-caps maintainer script: deb postinst, rpm %pre and %post.
#
# The capabilities deployment: jacamar-auth belongs to root:gitlab-runner with mode
# 0750 and carries cap_setuid,cap_setgid=ep, so that a runner running as the
# gitlab-runner service account (never root) can start it and downscope jobs. The
# group and the account are created when missing. The capability is set here in
# every case: a .deb's data.tar carries no extended attributes, and rpm sets the
# %caps of its header only when it was built with libcap.
set -e

case "${1:-}" in
    configure | 1 | 2) ;; # deb: configure; rpm: 1 = install, 2 = upgrade
    *) exit 0 ;;
esac

AUTH=/opt/jacamar/bin/jacamar-auth
ACCOUNT=gitlab-runner

if ! getent group "$ACCOUNT" >/dev/null; then
    groupadd --system "$ACCOUNT"
fi
if ! getent passwd "$ACCOUNT" >/dev/null; then
    useradd --system --gid "$ACCOUNT" --create-home --home-dir "/home/$ACCOUNT" \
        --shell /bin/bash --comment "GitLab Runner" "$ACCOUNT"
elif ! id -nG "$ACCOUNT" | tr ' ' '\n' | grep -qx "$ACCOUNT"; then
    usermod -a -G "$ACCOUNT" "$ACCOUNT"
fi

# rpm's %pre on a first install runs before the file exists.
if [ -e "$AUTH" ]; then
    # chown clears file capabilities: owner and mode first, then setcap.
    chown "root:$ACCOUNT" "$AUTH"
    chmod 0750 "$AUTH"
    setcap cap_setuid,cap_setgid=ep "$AUTH"
fi
exit 0
