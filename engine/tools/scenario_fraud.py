"""Fraud patterns of the scenario library, one function each (engine/tools/scenarios.py runs them).

Sources of knowledge, cited per pattern: OWASP Automated Threats to Web Applications (OAT-001
carding, OAT-008 credential stuffing, OAT-010 card cracking, OAT-011 scraping, OAT-019 account
creation, OAT-021 denial of inventory / scalping), the Merchant Risk Council and Visa/Mastercard
guidance on card testing, account takeover and first-party (friendly) fraud, and public write-ups
of triangulation and reshipping-mule schemes (Krebs on Security, FBI IC3 notices).  The timings
are those of the tools and people described there, varied per actor; none is taken from a rule.
"""

from __future__ import annotations

from datetime import timedelta as td

from .scenario_kit import DAY, FAR, HEADLESS, Book, Device, Person


def _sec(b: Book, low: float, high: float) -> td:
    return td(seconds=b.rng.uniform(low, high))


def _victim(b: Book, uid: str) -> Person:
    """An account with an honest past (the owner's own visits over the last two weeks)."""
    p = b.person(uid)
    b.history(p, sessions=(2, 5), days=(1, 14))
    return p


def _taker_login(b: Book, pattern: str, p: Person, named: bool) -> tuple:
    """A taker logs in to victim p from an address and a device of their own (labelled at that
    moment); returns (time, ip, device) for what the taker does next."""
    t, ip, dev = b.when(), b.ip(), b.device()
    b.label(p, pattern, True, named, t)
    b.click(p, t, "login", "/login", ip=ip, device=dev)
    return t, ip, dev


# -- named: the classes the issue lists ------------------------------------------------------------


def bot_burst(b: Book, named=True) -> None:
    """Scripted clients hammering product pages (price/stock checking, OAT-011/021) in bursts of
    80-200 requests over 30-70 s, started at any second, so a burst straddles a minute boundary."""
    r = b.rng
    for i in range(6):
        p = Person(b.uid("bb", i), r.choice(["US", "DE", "NL", "SG"]), Device("web", r.choice(HEADLESS)), b.ip())
        t = b.when()
        b.label(p, "bot_burst", True, named, t)
        for _ in range(r.randint(1, 3)):
            n, span = r.randint(80, 200), r.uniform(30, 70)
            for k in range(n):
                prod = b.products(1)[0]
                b.click(p, t + td(seconds=span * k / n + r.uniform(0, 0.2)), "product_view", f"/p/{prod[0]}", prod)
            t += td(minutes=r.uniform(8, 40))


def account_farm(b: Book, named=True) -> None:
    """Fake account creation from one address (OAT-019), paced a few minutes apart to stay under
    per-minute limits: sign-up, a look at one product, often a cart (holding promo stock)."""
    r = b.rng
    n = 0
    for farm in range(2):
        ip, t = b.ip(), b.when((1, 10))
        ua = b.device("web").ua
        for _ in range(r.randint(9, 14)):
            p = Person(b.uid("af", n), r.choice(["US", "US", "GB"]), Device("web", ua), ip)
            n += 1
            b.label(p, "account_farm", True, named, t)
            s = b.click(p, t, "page_view", "/", entry_point="direct")
            s = b.click(p, s + _sec(b, 4, 15), "signup", "/account/new")
            prod = b.products(1)[0]
            s = b.click(p, s + _sec(b, 3, 20), "product_view", f"/p/{prod[0]}", prod)
            if r.random() < 0.6:
                b.click(p, s + _sec(b, 2, 10), "add_to_cart", f"/p/{prod[0]}", prod)
            t += td(minutes=r.uniform(2, 6))


def slow_declines(b: Book, named=True) -> None:
    """A fraudster with a few stolen cards tries them one by one, slowly (every 8-20 min) to stay
    under velocity checks; the issuer keeps declining, sometimes one goes through."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("sd", i), cards=r.randint(2, 4))
        t = b.when((1, 9))
        b.label(p, "slow_declines", True, named, t)
        prod = b.products(1, low=120)[0]
        for k in range(r.randint(4, 7)):
            b.click(p, t, "checkout", "/checkout")
            b.tx(p, t + _sec(b, 1, 4), prod[2], "failed", method="card", card=p.cards[k % len(p.cards)])
            t += td(minutes=r.uniform(8, 20))
        if r.random() < 0.5:
            b.tx(p, t, prod[2], "completed", method="card", card=b.card())


def card_drip(b: Book, named=True) -> None:
    """Slow card testing: one new stolen card every 45-80 min, a small charge each, for hours,
    from one account (a checker script throttled to look like a person)."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("cd", i), kind="web")
        t = b.when((0.5, 4))
        b.label(p, "card_drip", True, named, t)
        for _ in range(r.randint(5, 8)):
            b.click(p, t, "checkout", "/checkout")
            b.tx(p, t + _sec(b, 2, 9), round(r.uniform(1, 12), 2), r.choice(["completed", "completed", "failed"]),
                 method="card", card=b.card())
            t += td(minutes=r.uniform(45, 80))


def credential_stuffing(b: Book, named=True) -> None:
    """Leaked username/password pairs tried against many accounts (OAT-008), through a handful of
    rotating proxy IPs: one or two login attempts per account, most fail; a hit is used at once."""
    r = b.rng
    n = 0
    for campaign in range(2):
        ips = [(b.ip(), r.choice(["US", "US", "GB", "DE", "BR", "VN", "ID", "RU", "NL"]))   # residential proxies
               for _ in range(r.randint(5, 8))]
        ua = r.choice(HEADLESS[2:] + ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0"])
        t = b.when((1, 10))
        for _ in range(r.randint(12, 20)):
            p = b.person(b.uid("cs", n))
            n += 1
            if r.random() < 0.5:
                b.history(p, sessions=(1, 3))
            ip, where = r.choice(ips)
            dev = Device("web", ua)
            b.label(p, "credential_stuffing", True, named, t)
            s = t
            for _ in range(r.randint(1, 2)):
                b.click(p, s, "login", "/login", ip=ip, country=where, device=dev, result="failed")
                s += _sec(b, 1, 6)
            if r.random() < 0.15:                     # a hit: look at stored cards and buy
                b.click(p, s, "login", "/login", ip=ip, country=where, device=dev, result="ok")
                b.click(p, s + _sec(b, 3, 10), "page_view", "/account/payment", ip=ip, country=where, device=dev)
                b.shop(p, s + _sec(b, 20, 60), views=1, ip=ip, country=where, device=dev, pace=6, low=200, login=False,
                       tx_ip=ip)
            t += _sec(b, 10, 150)


def proxy_card_ring(b: Book, named=True) -> None:
    """A ring of accounts paying with fresh stolen cards, two or three each, behind a few proxies,
    so that no single account, card or IP looks busy."""
    r = b.rng
    n = 0
    for ring in range(2):
        proxies = [b.ip() for _ in range(r.randint(3, 5))]
        t0 = b.when((1, 8))
        for _ in range(r.randint(6, 9)):
            p = b.person(b.uid("pr", n), kind="web")
            n += 1
            t = t0 + td(minutes=r.uniform(0, 90))
            b.label(p, "proxy_card_ring", True, named, t)
            for k in range(r.randint(2, 3)):
                ip = r.choice(proxies)
                end, _, _ = b.shop(p, t, views=r.randint(1, 3), ip=ip, pace=12, low=90, card=b.card(), method="card",
                                   tx_ip=ip)
                t = end + td(minutes=r.uniform(4, 25))


def ato_proxy_reset(b: Book, named=True) -> None:
    """Account takeover through the password reset: a phished email account lets the taker reset
    the password (ticket), from a residential proxy in the victim's own country and a new device,
    then buy with the stored card."""
    r = b.rng
    for i in range(6):
        p = _victim(b, b.uid("ar", i))
        t = b.when()
        taker_ip, dev = b.ip(), b.device("web" if p.device.kind != "web" else "android")
        b.label(p, "ato_proxy_reset", True, named, t)
        b.ticket(p, t, "password_reset", channel=r.choice(["email", "web"]))
        if r.random() < 0.5:
            b.ticket(p, t + td(minutes=r.uniform(2, 10)), "email_change", channel="web")
        s = t + td(minutes=r.uniform(4, 30))
        b.click(p, s, "login", "/login", ip=taker_ip, device=dev)
        b.shop(p, s + _sec(b, 5, 30), views=r.randint(1, 3), ip=taker_ip, device=dev, low=150, items=r.randint(2, 4),
               login=False, tx_ip=taker_ip)


def ato_browse_first(b: Book, named=True) -> None:
    """A taker who logs in from abroad and browses like a customer for half an hour or more
    before buying high-value goods with the stored card."""
    r = b.rng
    for i in range(6):
        p = _victim(b, b.uid("ab", i))
        t, c, ip, dev = b.when(), r.choice(FAR), b.ip(), b.device()
        c = c if c != p.country else "NG"
        b.label(p, "ato_browse_first", True, named, t)
        end, _, _ = b.shop(p, t, views=r.randint(8, 20), buy=False, pace=90, login=True, ip=ip, country=c, device=dev)
        b.shop(p, end + td(minutes=r.uniform(25, 60)), views=1, items=r.randint(3, 5), low=200, ip=ip, country=c,
               device=dev, login=False)


def ato_split_orders(b: Book, named=True) -> None:
    """A taker who splits the cash-out into a few medium orders on a new device, often changing
    the delivery address first, instead of one large order that would stand out."""
    r = b.rng
    for i in range(6):
        p = _victim(b, b.uid("as", i))
        t, ip, dev = _taker_login(b, "ato_split_orders", p, named)
        if r.random() < 0.6:
            b.ticket(p, t + td(minutes=r.uniform(1, 6)), "address_change", channel="web")
        s = t + td(minutes=r.uniform(2, 8))
        for _ in range(r.randint(2, 4)):
            end, _, _ = b.shop(p, s, views=r.randint(1, 2), items=1, low=140, high=400, ip=ip, device=dev, login=False)
            s = end + td(minutes=r.uniform(3, 18))


def refund_abuse(b: Book, named=True) -> None:
    """Serial refund claims: a customer buys, then files refund / item-not-received tickets for
    most orders, across channels, often within a day of delivery (a refund-as-a-service client)."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("ra", i))
        b.history(p, sessions=(2, 4), days=(3, 14), buy_rate=0.9)
        t = b.when((0.5, 6))
        first = None
        for _ in range(r.randint(3, 5)):
            end, bought, _ = b.shop(p, t, low=40)
            claim = end + td(hours=r.uniform(0.3, 3))
            first = first or claim
            b.ticket(p, claim, r.choice(["refund", "item_not_received", "refund"]), channel=r.choice(["chat", "email"]),
                     priority=r.choice(["medium", "high"]))
            t = claim + td(minutes=r.uniform(10, 60))
        b.label(p, "refund_abuse", True, named, first)


def impossible_travel(b: Book, named=True) -> None:
    """The same account active from two countries too far apart for the time between them: the
    owner at home, then a stolen session cookie replayed from another continent."""
    r = b.rng
    for i in range(6):
        p = _victim(b, b.uid("it", i))
        t = b.when((1, 10))
        end, _, _ = b.shop(p, t, buy=False, views=r.randint(2, 5))
        c = r.choice([x for x in FAR if x != p.country])
        s = end + td(minutes=r.uniform(8, 70))
        b.label(p, "impossible_travel", True, named, s)
        b.shop(p, s, views=r.randint(1, 3), ip=b.ip(), country=c, device=p.device, login=False, low=100)


def steady_scraper(b: Book, named=True) -> None:
    """A catalogue scraper (OAT-011) walking product pages at a fixed pace (about one page a
    second, machine-regular gaps) for 10-20 minutes, never bursting."""
    r = b.rng
    for i in range(6):
        p = Person(b.uid("sc", i), r.choice(["US", "IE", "DE"]), Device("web", r.choice(HEADLESS)), b.ip())
        t = b.when()
        b.label(p, "steady_scraper", True, named, t)
        step, jitter = r.uniform(0.8, 1.6), r.uniform(0.005, 0.05)
        for k in range(int(r.uniform(10, 20) * 60 / step)):
            prod = b.products(1)[0]
            b.click(p, t + td(seconds=k * step + r.uniform(-jitter, jitter)), "product_view", f"/p/{prod[0]}", prod)


def card_collector(b: Book, named=True) -> None:
    """One account paying with many different cards over a few hours (bought card dumps), for
    goods that resell well, some declined; irregular pace so no hour looks busy."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("cc", i))
        t = b.when((0.5, 5))
        b.label(p, "card_collector", True, named, t)
        for _ in range(r.randint(5, 9)):
            b.shop(p, t, views=r.randint(1, 3), pace=15, card=b.card(), method="card", category=r.choice(["electronics", "beauty"]),
                   amount=None)
            if r.random() < 0.3:
                b.tx(p, t + td(minutes=2), round(r.uniform(60, 300), 2), "failed", method="card", card=b.card())
            t += td(minutes=r.uniform(15, 70))


def card_testing(b: Book, named=True) -> None:
    """Classic card testing (OAT-001 carding): tiny authorisations on many stolen cards in a few
    minutes from one account, most declined."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("ct", i), kind="web")
        t = b.when()
        b.label(p, "card_testing", True, named, t)
        b.click(p, t, "page_view", "/")
        t += _sec(b, 10, 60)
        for _ in range(r.randint(6, 14)):
            b.tx(p, t, round(r.uniform(0.5, 5), 2), "failed" if r.random() < 0.7 else "completed", method="card", card=b.card())
            t += _sec(b, 6, 50)


# -- not named by the issue ------------------------------------------------------------------------
def promo_abuse(b: Book, named=False) -> None:
    """New-customer promotion farmed with new accounts by one person: each account signs up,
    applies the welcome code and buys a cheap item, paying with the same one or two cards, from
    addresses of one /24 (home router restarted, phone hotspot)."""
    r = b.rng
    n = 0
    for ring in range(2):
        net, cards, dev = ".".join(b.ip().split(".")[:3]), [b.card() for _ in range(r.randint(1, 2))], b.device()
        t = b.when((0, 4))
        for _ in range(r.randint(5, 8)):
            p = Person(b.uid("pa", n), "US", dev, b.ip(net), cards)
            n += 1
            b.label(p, "promo_abuse", True, named, t)
            b.click(p, t, "signup", "/account/new")
            end, _, _ = b.shop(p, t + _sec(b, 20, 60), views=r.randint(1, 3), items=1, high=60, card=r.choice(cards),
                               method="card", login=False)
            b.click(p, end - _sec(b, 3, 5), "page_view", "/checkout", promo="WELCOME20")
            t = end + td(minutes=r.uniform(10, 90))


def triangulation(b: Book, named=False) -> None:
    """Triangulation: a fake marketplace storefront takes real buyers' orders and fills them here
    with stolen cards, shipping to each buyer: one account, many orders, each a different card
    and delivery address, spread over the day."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("tr", i), kind="web")
        b.history(p, sessions=(1, 2), days=(2, 10), buy_rate=1.0)
        t = b.when((0.5, 4))
        b.label(p, "triangulation", True, named, t)
        for _ in range(r.randint(4, 8)):
            end, _, _ = b.shop(p, t, views=1, items=1, pace=8, card=b.card(), method="card", low=50, login=False)
            b.click(p, end - _sec(b, 5, 8), "page_view", "/checkout/address", ship_to="new")
            t = end + td(minutes=r.uniform(20, 80))


def friendly_fraud(b: Book, named=False) -> None:
    """First-party fraud: an established customer buys something expensive, receives it, then
    claims it never arrived and disputes the payment (chargeback), usually a week or so later;
    at the time of purchase nothing looks wrong except an unusually large basket."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("ff", i))
        b.history(p, sessions=(3, 6), days=(8, 14), buy_rate=0.7)
        t = DAY - td(days=r.uniform(5, 7), hours=r.uniform(0, 8))
        end, _, _ = b.shop(p, t, items=r.randint(3, 5), low=150)
        claim = b.when((0.5, 10))
        b.label(p, "friendly_fraud", True, named, claim)
        b.ticket(p, claim, "item_not_received", channel="email", priority="medium")
        b.ticket(p, claim + td(hours=r.uniform(0.5, 3)), "payment", channel="phone", priority="high")


def reshipping_mule(b: Book, named=False) -> None:
    """A reshipping mule's account: new, buys high-value electronics with several cards not its
    own within hours, then asks support to change the delivery address after each purchase."""
    r = b.rng
    for i in range(6):
        p = b.person(b.uid("rm", i), cards=0)
        t = b.when((0.5, 6))
        b.label(p, "reshipping_mule", True, named, t)
        b.click(p, t, "signup", "/account/new")
        s = t + td(minutes=r.uniform(1, 10))
        for _ in range(r.randint(2, 4)):
            end, _, _ = b.shop(p, s, category="electronics", items=r.randint(1, 3), low=200, card=b.card(), method="card",
                               login=False)
            b.ticket(p, end + td(minutes=r.uniform(3, 30)), "address_change", channel="chat", priority="medium")
            s = end + td(minutes=r.uniform(30, 120))


def gift_card_cashout(b: Book, named=False) -> None:
    """Account takeover cashed out in gift cards (instantly resold): new device, straight to the
    gift-card page, several denominations in a row on the stored card."""
    r = b.rng
    for i in range(6):
        p = _victim(b, b.uid("gc", i))
        t, ip, dev = _taker_login(b, "gift_card_cashout", p, named)
        s = b.click(p, t + _sec(b, 5, 20), "page_view", "/gift-cards", ip=ip, device=dev)
        for _ in range(r.randint(2, 5)):
            s += _sec(b, 15, 70)
            b.click(p, s, "add_to_cart", "/gift-cards", ip=ip, device=dev, item="gift_card")
            s += _sec(b, 10, 30)
            b.click(p, s, "purchase", "/checkout/confirm", ip=ip, device=dev)
            b.tx(p, s + _sec(b, 0.5, 2), r.choice([50, 100, 100, 200, 250, 500]), method="card", ip=ip)


def scalper_bot(b: Book, named=False) -> None:
    """Sneaker/console scalping bots (OAT-021 denial of inventory): at a product drop, accounts run
    by one bot refresh a few product pages every few seconds, add to cart and check out in
    seconds, each with its own card, from residential proxies."""
    r = b.rng
    drop = b.when((2, 8))
    prods = b.products(3, "electronics")
    for i in range(7):
        dev = Device("web", r.choice(HEADLESS))
        p = Person(b.uid("sb", i), "US", dev, b.ip(), [b.card()])
        t = drop - td(seconds=r.uniform(30, 240))
        b.label(p, "scalper_bot", True, named, t)
        while t < drop:
            prod = r.choice(prods)
            b.click(p, t, "product_view", f"/p/{prod[0]}", prod)
            t += _sec(b, 1.0, 4.0)
        prod = r.choice(prods)
        t = b.click(p, t, "add_to_cart", f"/p/{prod[0]}", prod)
        t = b.click(p, t + _sec(b, 0.4, 1.5), "checkout", "/checkout")
        t = b.click(p, t + _sec(b, 0.8, 3), "purchase", "/checkout/confirm")
        b.tx(p, t + _sec(b, 0.3, 1), prod[2] * r.randint(1, 2), method="card")


def card_cracking(b: Book, named=False) -> None:
    """Card cracking (OAT-010): one stolen card number whose expiry date and CVV are unknown,
    guessed by trying combinations through several throwaway accounts, so the same card
    fingerprint fails again and again, a little per account, until one combination passes."""
    r = b.rng
    n = 0
    for card_no in range(3):
        card, t = b.card(), b.when((1, 9))
        ua = r.choice(HEADLESS)
        for _ in range(r.randint(2, 4)):
            p = Person(b.uid("ck", n), r.choice(["US", "GB"]), Device("web", ua), b.ip(), [card])
            n += 1
            b.label(p, "card_cracking", True, named, t)
            b.click(p, t, "checkout", "/checkout")
            for _ in range(r.randint(3, 9)):
                t += _sec(b, 4, 40)
                b.tx(p, t, round(r.uniform(1, 30), 2), "failed", method="card", card=card)
            if r.random() < 0.3:
                b.tx(p, t + _sec(b, 4, 40), round(r.uniform(1, 30), 2), "completed", method="card", card=card)
            t += td(minutes=r.uniform(3, 30))


def loyalty_drain(b: Book, named=False) -> None:
    """Loyalty points drained after an account takeover: points are money nobody watches; the
    taker logs in from a new device, looks at the points balance and redeems everything for
    goods (or transfers them), paying with points, not a card."""
    r = b.rng
    for i in range(6):
        p = _victim(b, b.uid("lp", i))
        t, ip, dev = _taker_login(b, "loyalty_drain", p, named)
        s = b.click(p, t + _sec(b, 5, 30), "page_view", "/account/rewards", ip=ip, device=dev)
        for _ in range(r.randint(1, 3)):
            end, _, _ = b.shop(p, s + _sec(b, 20, 90), views=r.randint(1, 2), items=1, low=80, ip=ip, device=dev,
                               method="loyalty_points", card="", login=False)
            s = end


NAMED = [bot_burst, account_farm, slow_declines, card_drip, credential_stuffing, proxy_card_ring, ato_proxy_reset,
         ato_browse_first, ato_split_orders, refund_abuse, impossible_travel, steady_scraper, card_collector, card_testing]
UNNAMED = [promo_abuse, triangulation, friendly_fraud, reshipping_mule, gift_card_cashout, scalper_bot, card_cracking,
           loyalty_drain]
