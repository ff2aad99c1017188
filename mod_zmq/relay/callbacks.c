/*
 * callbacks.c - package relay's Go functions as the C relay's callbacks
 * (relay.h). cgo's _cgo_export.h declares them; only this file includes it.
 */
#include "relay.h"
#include "_cgo_export.h"

void relay_register_go(void)
{
    static const relay_callbacks go = {
        .relay = modzmq_go_relay,
        .dial = modzmq_go_dial,
        .adopt = modzmq_go_adopt,
        .stale = modzmq_go_stale,
        .ws_step = modzmq_go_ws_step,
        .resume = modzmq_go_resume,
        .send_body = modzmq_go_send_body,
    };
    relay_set_callbacks(&go);
}
