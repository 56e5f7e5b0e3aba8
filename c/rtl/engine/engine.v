// engine.v -- FPGAI's generic integer engine (docs/fpga.md): the hardware twin of the C interpreter.
// A sequencer runs the program that the exporter compiled from the graph (model/formats/rtl_export.py):
// instructions of NF 16-bit fields (one or more an op), then an end word.  For each instruction tap_gen
// walks the taps; each cycle one input byte (padding: its zero point) and one word of P weights reach P
// MAC lanes, which accumulate (x - z_x) * (w - z_w) in int32; a finished group of up to P output channels
// (gch of them) moves to a shadow register and drains, channel by channel, through the contract's
// requantizer (requant_serial.v, bias and per-channel m, shift from the channel table) while the lanes
// run on.  Max pool takes the largest byte of each window.  Grouped and depthwise convs, average pools
// and residual adds are convs to the engine (the exporter says how); an add's two lanes, a - z_a and
// b - z_b, drain as a pair that the requantizer rounds once (kind bit 9).  Activations live in one
// block RAM where the exporter places them; weights in weight_ram.v.
//
// Streams: while wload is high, s_data bytes fill the weights (word after word, lane 0 first); then
// each image is IN_SIZE pixels in (CHW, to IN_BASE on), and OUT_SIZE bytes (the last op's output) come out on
// m_valid / m_data.  params.vh, written by the exporter, sets the sizes and the memory images.
`timescale 1ns / 1ps
module fpgai_engine (
    input  wire clk,
    input  wire rst,
    input  wire wload,
    input  wire s_valid,
    input  wire [7:0] s_data,
    output wire s_ready,
    output reg  m_valid,
    output wire [7:0] m_data
);
`include "params.vh"
    localparam NF = 32, AW = 16, LB = $clog2(P) + 1;      // LB: bits of a lane count
    localparam S_IN = 3'd0, S_FETCH = 3'd1, S_GO = 3'd2, S_RUN = 3'd3, S_OUT = 3'd4;
    localparam K_END = 2'd0, K_CONV = 2'd1, K_POOL = 2'd2;

    reg [2:0] state /*verilator public_flat_rd*/;            // public: the testbench's per-layer dumps
    reg [15:0] in_addr, out_cnt, pc;                   // in_addr: where the next pixel goes
    reg [5:0] fi;
    reg [16*NF-1:0] fields;
    reg [15:0] prog [0:NPROG-1];
    reg [15:0] prog_q;
    reg [71:0] chan [0:NCHAN-1];
    reg [71:0] chan_q;
    reg [7:0] amem [0:ADEPTH-1] /*verilator public_flat_rd*/;
    reg [7:0] a_q;
    initial begin
        $readmemh(PROGRAM_HEX, prog);
        $readmemh(CHANNELS_HEX, chan);
    end

    `define FIELD(i) fields[16*(i) +: 16]
    wire [15:0] f_kind = `FIELD(0), f_zx_zw = `FIELD(29), f_zp = `FIELD(30), f_clamp = `FIELD(31);
    wire [1:0] kind = f_kind[1:0];
    wire w_unsigned = f_kind[8], pairs = f_kind[9];
    wire is_conv = kind == K_CONV;
    wire [15:0] ch_end = `FIELD(17), gch = `FIELD(21), ohw = `FIELD(22), pbase = `FIELD(28);
    wire [7:0] zx = f_zx_zw[7:0], zw = f_zx_zw[15:8], zp = f_zp[7:0], qmin = f_clamp[7:0], qmax = f_clamp[15:8];

    // the tap stream: issue -> RAM reads (s1) -> operands (s2) -> accumulate (s3: group done)
    wire issue, pad, first, last, gen_busy;
    wire [AW-1:0] act_addr, tag_addr;
    wire [15:0] w_addr, tag_ch;
    reg drain_busy;
    reg s1_v, s1_pad, s1_first, s1_last, s2_v, s2_pad, s2_first, s2_last, s3_v, s3_last;
    reg [AW-1:0] s1_tag, s2_tag, s3_tag;
    reg [15:0] s1_ch, s2_ch, s3_ch;
    wire hold = is_conv && (drain_busy || (s1_v && s1_last) || (s2_v && s2_last) || (s3_v && s3_last));

    tap_gen #(.AW(AW)) gen (
        .clk(clk), .rst(rst), .start(state == S_GO && kind != K_END), .hold(hold),
        .in_base(`FIELD(1)), .out_base(`FIELD(2)), .wbase(`FIELD(27)), .h(`FIELD(3)), .w(`FIELD(4)),
        .cing_last(`FIELD(5)), .kh_last(`FIELD(6)), .kw_last(`FIELD(7)), .sh(`FIELD(8)), .sw(`FIELD(9)),
        .dh(`FIELD(10)), .dw(`FIELD(11)), .pt(`FIELD(12)), .pl(`FIELD(13)), .oh_last(`FIELD(14)),
        .ow_last(`FIELD(15)), .groups_last(`FIELD(16)), .hw(`FIELD(18)), .gstep_in(`FIELD(19)), .gstep_out(`FIELD(20)), .gch(gch),
        .wstep(`FIELD(26)), .row_start(`FIELD(23)), .sh_w(`FIELD(24)), .dh_w(`FIELD(25)),
        .issue(issue), .act_addr(act_addr), .w_addr(w_addr), .pad(pad), .first(first), .last(last),
        .tag_addr(tag_addr), .tag_ch(tag_ch), .busy(gen_busy));

    // weights: loaded a byte at a time while wload is high (on a target whose block RAM the bitstream
    // initialises, WEIGHTS_STREAMED = 0, they are there from the start)
    reg [8*P-1:0] wbuf;
    reg [LB-1:0] wbyte;
    reg w_we;
    reg [WAW-1:0] w_wa;
    wire [8*P-1:0] w_q;
    weight_ram #(.P(P), .DEPTH(WDEPTH), .AW(WAW), .STREAMED(WEIGHTS_STREAMED), .INIT(WEIGHTS_HEX)) wram (
        .clk(clk), .we(w_we), .waddr(w_wa), .wdata(wbuf), .raddr(w_addr[WAW-1:0]), .rdata(w_q));

    // operands: x - z_x (0 for padding) and w - z_w, 9-bit signed
    reg signed [8:0] s2_x;
    reg [7:0] s2_raw;
    wire [32*P-1:0] acc_all;
    reg [32*P-1:0] shadow;
    reg [7:0] pool_max;
    genvar l;
    generate
        for (l = 0; l < P; l = l + 1) begin : lane
            wire [7:0] wb = w_q[8*l +: 8];
            reg signed [8:0] s2_w;
            reg signed [31:0] acc;
            wire signed [17:0] prod = s2_x * s2_w;
            assign acc_all[32*l +: 32] = acc;
            always @(posedge clk) begin
                s2_w <= w_unsigned ? {1'b0, wb} - {1'b0, zw} : {wb[7], wb};
                if (s2_v && is_conv)
                    acc <= (s2_first ? 32'sd0 : acc) + prod;
            end
        end
    endgenerate

    // the drain: a finished group's gch channels (fewer where the layer's ch_end comes first), one at a
    // time, into the requantizer
    reg [LB:0] d_l;
    reg [15:0] d_ch;
    reg [AW-1:0] d_addr;
    reg d_fetched;
    wire d_end = d_l == gch[LB:0] || d_ch >= ch_end;
    wire rq_ready, rq_valid, rq_idle;
    wire [7:0] rq_out;
    wire [AW-1:0] rq_addr;
    wire rq_take = drain_busy && !d_end && d_fetched;
    requant_serial #(.AW(AW)) rq (
        .clk(clk), .rst(rst), .in_valid(rq_take), .in_ready(rq_ready), .acc(shadow[31:0]),
        .bias(chan_q[31:0]), .m(chan_q[63:32]), .shift(chan_q[69:64]), .addr(d_addr), .keep_prod(pairs && !d_l[0]),
        .add_kept(pairs && d_l[0]), .zp(zp), .qmin(qmin),
        .qmax(qmax), .out_valid(rq_valid), .out(rq_out), .out_addr(rq_addr), .idle(rq_idle));

    wire pool_write = s3_v && s3_last && kind == K_POOL;
    wire [7:0] pool_in = s2_pad ? 8'd0 : s2_raw;
    wire [7:0] pool_base = s2_first ? 8'd0 : pool_max;
    wire layer_done = !gen_busy && !s1_v && !s2_v && !s3_v && !drain_busy && rq_idle;

    // activation RAM: one read port (taps, then the logits), one write port (pixels, outputs)
    wire [AW-1:0] a_ra = state == S_OUT ? OUT_BASE + out_cnt[AW-1:0] : act_addr;
    wire a_we = (state == S_IN && !wload && s_valid) || rq_valid || pool_write;
    wire [AW-1:0] a_wa = state == S_IN ? in_addr[AW-1:0] : rq_valid ? rq_addr : s3_tag;
    wire [7:0] a_wd = state == S_IN ? s_data : rq_valid ? rq_out : pool_max;
    always @(posedge clk) begin
        if (a_we)
            amem[a_wa] <= a_wd;
        a_q <= amem[a_ra];
        prog_q <= prog[pc + {10'd0, fi}];
        chan_q <= chan[pbase + d_ch];
    end

    assign s_ready = state == S_IN;
    assign m_data = a_q;

    always @(posedge clk) begin
        {s1_v, s1_pad, s1_first, s1_last, s1_tag, s1_ch} <= {issue, pad, first, last, tag_addr, tag_ch};
        {s2_v, s2_pad, s2_first, s2_last, s2_tag, s2_ch, s2_raw} <= {s1_v, s1_pad, s1_first, s1_last, s1_tag, s1_ch, a_q};
        s2_x <= s1_pad ? 9'sd0 : $signed({1'b0, a_q}) - $signed({1'b0, zx});
        {s3_v, s3_last, s3_tag, s3_ch} <= {s2_v, s2_last, s2_tag, s2_ch};
        if (s2_v)
            pool_max <= pool_in > pool_base ? pool_in : pool_base;
        if (rst)
            {s1_v, s2_v, s3_v} <= 3'd0;
    end

    always @(posedge clk) begin
        if (rst) begin
            drain_busy <= 1'b0;
        end else if (s3_v && s3_last && is_conv) begin
            shadow <= acc_all;
            {d_l, d_ch, d_addr, d_fetched, drain_busy} <= {{(LB + 1){1'b0}}, s3_ch, s3_tag, 1'b0, 1'b1};
        end else if (drain_busy) begin
            if (d_end)
                drain_busy <= 1'b0;
            else if (!d_fetched)
                d_fetched <= 1'b1;
            else if (rq_ready) begin
                shadow <= shadow >> 32;
                {d_l, d_ch, d_addr, d_fetched} <= {d_l + 1'b1, d_ch + 16'd1, d_addr + ohw[AW-1:0], 1'b0};
            end
        end
    end

    always @(posedge clk) begin
        w_we <= 1'b0;
        m_valid <= state == S_OUT && out_cnt < OUT_SIZE;
        if (w_we)
            w_wa <= w_wa + 1'b1;
        if (rst) begin
            state <= S_IN;
            {wbyte, w_wa} <= 0;
            in_addr <= IN_BASE;
        end else case (state)
            S_IN: if (s_valid && wload) begin
                wbuf <= {s_data, wbuf[8*P-1:8]};
                wbyte <= wbyte == P - 1 ? {LB{1'b0}} : wbyte + 1'b1;
                w_we <= wbyte == P - 1;
            end else if (s_valid) begin
                in_addr <= in_addr + 16'd1;
                if (in_addr == IN_BASE + IN_SIZE - 1)
                    {state, pc, fi} <= {S_FETCH, 16'd0, 6'd0};
            end
            S_FETCH: begin
                fi <= fi + 6'd1;
                if (fi != 6'd0)
                    fields <= {prog_q, fields[16*NF-1:16]};
                if (fi == NF)
                    state <= S_GO;
            end
            S_GO: if (kind == K_END)
                {state, out_cnt} <= {S_OUT, 16'd0};
            else
                state <= S_RUN;
            S_RUN: if (layer_done && !issue) begin
                {state, fi} <= {S_FETCH, 6'd0};
                pc <= pc + NF[15:0];
            end
            default: begin
                out_cnt <= out_cnt + 16'd1;
                if (out_cnt == OUT_SIZE) begin
                    state <= S_IN;
                    in_addr <= IN_BASE;
                end
            end
        endcase
    end
endmodule
