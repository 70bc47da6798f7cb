/*
 * seccomp_exec.c - runs a program under the seccomp filters chatprovd.service asks systemd
 * for, so tests can show that the daemon works inside them without systemd.
 *
 *   seccomp_exec ALLOWED_FILE -- PROGRAM [ARGS...]
 *
 * ALLOWED_FILE lists the system calls the unit's SystemCallFilter= leaves allowed, one name a
 * line (test_systemd_seccomp.py expands the sets with systemd-analyze). Like systemd it then
 * installs, before exec:
 * - SystemCallFilter= + SystemCallErrorNumber=EPERM: every other call fails with EPERM;
 *   SystemCallArchitectures=native: calls of other ABIs kill the process;
 * - RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX: socket() of any other family fails
 *   with EAFNOSUPPORT;
 * - MemoryDenyWriteExecute=yes: writable+executable mappings, mprotect/pkey_mprotect adding
 *   PROT_EXEC and shmat(SHM_EXEC) fail with EPERM.
 * Names libseccomp does not know on this architecture are skipped, as systemd skips them.
 */
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <unistd.h>

#define NAME_MAX_LEN 64

/* Adds an allow rule for every known name in the file; returns how many, -1 on error. */
static int allow_listed(scmp_filter_ctx ctx, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "seccomp_exec: %s: %s\n", path, strerror(errno));
		return -1;
	}
	char line[NAME_MAX_LEN + 2];
	int n = 0;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, " \t\r\n")] = '\0';
		if (!line[0] || line[0] == '#')
			continue;
		int nr = seccomp_syscall_resolve_name(line);
		if (nr == __NR_SCMP_ERROR)
			continue;
		/* socket, mmap, mprotect, shmat get argument rules below instead. */
		if (nr == SCMP_SYS(socket) || nr == SCMP_SYS(mmap) || nr == SCMP_SYS(mprotect) ||
		    nr == SCMP_SYS(pkey_mprotect) || nr == SCMP_SYS(shmat)) {
			n++;
			continue;
		}
		if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) != 0) {
			fprintf(stderr, "seccomp_exec: cannot allow %s\n", line);
			n = -1;
			break;
		}
		n++;
	}
	fclose(f);
	return n;
}

/* RestrictAddressFamilies= and MemoryDenyWriteExecute=, with argument comparisons. */
static int add_argument_rules(scmp_filter_ctx ctx)
{
	const int families[] = {AF_UNIX, AF_INET, AF_INET6};
	int rc = 0;
	for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
		rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
		                       SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)families[i]));
	/* Every other family fails with EAFNOSUPPORT, as under systemd. One comparison per
	 * argument and rule (libseccomp), hence the ranges: 0, 3..9, above 10. */
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
	                       SCMP_A0(SCMP_CMP_EQ, 0));
	for (scmp_datum_t fam = AF_INET + 1; fam < AF_INET6; fam++)
		rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
		                       SCMP_A0(SCMP_CMP_EQ, fam));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
	                       SCMP_A0(SCMP_CMP_GT, AF_INET6));
	const scmp_datum_t wx = PROT_WRITE | PROT_EXEC;
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
	                       SCMP_A2(SCMP_CMP_MASKED_EQ, wx, PROT_WRITE));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
	                       SCMP_A2(SCMP_CMP_MASKED_EQ, wx, PROT_EXEC));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
	                       SCMP_A2(SCMP_CMP_MASKED_EQ, wx, 0));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
	                       SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(pkey_mprotect), 1,
	                       SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	rc |= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(shmat), 1,
	                       SCMP_A2(SCMP_CMP_MASKED_EQ, SHM_EXEC, 0));
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "--") != 0) {
		fprintf(stderr, "usage: seccomp_exec ALLOWED_FILE -- PROGRAM [ARGS...]\n");
		return 2;
	}
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
	if (!ctx) {
		fprintf(stderr, "seccomp_exec: seccomp_init failed\n");
		return 1;
	}
	int allowed = allow_listed(ctx, argv[1]);
	if (allowed < 0)
		goto fail;
	if (add_argument_rules(ctx) != 0) {
		fprintf(stderr, "seccomp_exec: cannot add the argument rules\n");
		goto fail;
	}
	/* Calls of a foreign ABI (SystemCallArchitectures=native): killed, as systemd does. */
	if (seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS) != 0 ||
	    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1) != 0 || seccomp_load(ctx) != 0) {
		fprintf(stderr, "seccomp_exec: cannot load the filter\n");
		goto fail;
	}
	seccomp_release(ctx);
	fprintf(stderr, "seccomp_exec: %d system calls allowed, others EPERM\n", allowed);
	execv(argv[3], argv + 3);
	fprintf(stderr, "seccomp_exec: %s: %s\n", argv[3], strerror(errno));
	return 127;
fail:
	seccomp_release(ctx);
	return 1;
}
