/*
 * The pod sandbox's pause process for the real-node lane: it holds the pod's
 * namespaces, sleeps until SIGINT or SIGTERM, and reaps orphaned children
 * (it is PID 1 of the pod when the PID namespace is shared). Built static,
 * so the pause image is this one file (scripts/image.sh).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
	(void)sig;
	_exit(0);
}

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	struct sigaction term = {0}, chld = {0};
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause (bitcoin-controller hack/node-image)");
		return 0;
	}
	term.sa_handler = stop;
	chld.sa_handler = reap;
	chld.sa_flags = SA_NOCLDSTOP;
	if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
	    sigaction(SIGCHLD, &chld, NULL) < 0) {
		perror("sigaction");
		return 1;
	}
	for (;;) {
		pause();
	}
}
