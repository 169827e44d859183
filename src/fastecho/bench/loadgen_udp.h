/*
 * loadgen_udp.h: the load generator's UDP mode (lg_config.udp). Internal to
 * the load generator: lg_run() hands a UDP config here. The contract of the
 * mode (what is sent, checked and counted) is in loadgen.h.
 */
#ifndef FASTECHO_LOADGEN_UDP_H
#define FASTECHO_LOADGEN_UDP_H

#include "loadgen.h"

/*
 * Validate `config` for UDP and run it. result must be zeroed by the caller,
 * with the server figures at -1. Returns LG_OK, LG_BAD_CONFIG or LG_FAILED,
 * the reason in result->error.
 */
int lg_udp_run(const lg_config *config, lg_result *result);

#endif /* FASTECHO_LOADGEN_UDP_H */
