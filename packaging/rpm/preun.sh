# retinad %preun ($1: 0 = erase, 1 = upgrade). Erase: stop and disable it. rpm keeps a
# changed /etc/retinad/retinad.toml as .rpmsave.
if [ "$1" -eq 0 ]; then
	if [ -d /run/systemd/system ]; then
		systemctl disable --now retinad.service >/dev/null 2>&1 || :
	fi
	find /usr/lib/retinad -type d -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || :
fi
exit 0
