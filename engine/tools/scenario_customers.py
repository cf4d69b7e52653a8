"""Ordinary customers of the scenario library who look unusual, one function per class, and the
background population (engine/tools/scenarios.py runs them).

Sources of knowledge: carrier-grade NAT (RFC 6598, RFC 6888: thousands of subscribers behind one
address) and corporate / campus egress; Apple Pay and Google Pay express checkout and push deep
links (a purchase seconds after opening the app); "buy again" from the order history; issuer
declines (insufficient funds, expired card, 3-D Secure abandoned) followed by another way to pay;
travellers' cards and phones abroad; families sharing a card; gift buying and sale days (Black
Friday / Cyber Monday baskets); new phones with a password reset; privacy VPNs; password-manager
autofill.  Every actor has a history of their own over the prior days where a real one would.
"""

from __future__ import annotations

from datetime import timedelta as td

from .scenario_kit import DAY, FAR, NEIGHBOURS, Book, Person


def _sec(b: Book, low: float, high: float) -> td:
    return td(seconds=b.rng.uniform(low, high))


def _customer(b: Book, uid: str, **kw) -> Person:
    p = b.person(uid, **kw)
    b.history(p, sessions=(2, 6), days=(1, 14))
    return p


# -- the issue's four classes ------------------------------------------------------------------
def carrier_nat(b: Book, named=True) -> None:
    """Mobile customers behind a carrier's CGNAT address: many unrelated people share one public
    IP in the same quarter hour (lunch break, commute), each shopping normally on their phone."""
    r = b.rng
    n = 0
    for group in range(2):
        ip, t0, country = b.ip(), b.when((3, 12)), r.choice(["US", "GB", "DE"])
        for _ in range(r.randint(12, 18)):
            p = _customer(b, b.uid("cn", n), country=country, kind=r.choice(["ios", "android"]))
            n += 1
            b.label(p, "carrier_nat", False, named)
            b.shop(p, t0 + td(minutes=r.uniform(0, 14)), ip=ip, tx_ip=ip, buy=r.random() < 0.5,
                   entry=r.choice(["push", "direct", "search"]))


def express_wallet_push(b: Book, named=True) -> None:
    """A push notification deep-links to a product; the customer taps Apple Pay / Google Pay on
    the product page and confirms with Face ID: the purchase comes seconds after the first event."""
    r = b.rng
    for i in range(12):
        kind = r.choice(["ios", "ios", "android"])
        p = _customer(b, b.uid("ew", i), kind=kind)
        b.label(p, "express_wallet_push", False, named)
        t = b.when()
        prod = b.products(1)[0]
        wallet = "apple_pay" if kind == "ios" else "google_pay"
        s = b.click(p, t, "page_view", f"/p/{prod[0]}", entry_point="push", campaign="restock")
        s = b.click(p, s + _sec(b, 0.4, 1.5), "product_view", f"/p/{prod[0]}", prod)
        s = b.click(p, s + _sec(b, 1.5, 6), "checkout", "/checkout/express", express=True, wallet=wallet)
        s = b.click(p, s + _sec(b, 1.5, 5), "purchase", "/checkout/confirm", express=True)
        b.tx(p, s + _sec(b, 0.3, 1.2), prod[2], method=wallet)


def buy_again(b: Book, named=True) -> None:
    """A regular reorders from the order history (pet food, coffee, razors): order page, "buy
    again", checkout with the saved card, no product page in between."""
    r = b.rng
    for i in range(12):
        p = _customer(b, b.uid("ba", i))
        b.label(p, "buy_again", False, named)
        t = b.when()
        prod = r.choice(p.products)
        s = b.click(p, t, "page_view", "/account/orders", entry_point="order_history")
        s = b.click(p, s + _sec(b, 1.5, 6), "add_to_cart", f"/p/{prod[0]}", prod, entry_point="order_history")
        s = b.click(p, s + _sec(b, 1, 4), "checkout", "/checkout")
        s = b.click(p, s + _sec(b, 2, 6), "purchase", "/checkout/confirm")
        b.tx(p, s + _sec(b, 0.3, 1.5), prod[2] * r.randint(1, 3))


def declines_then_alternative(b: Book, named=True) -> None:
    """An honest customer whose card is declined (funds, expired, 3-D Secure abandoned) two to
    four times in a few minutes, who then pays another way and succeeds."""
    r = b.rng
    for i in range(12):
        p = _customer(b, b.uid("da", i), cards=2)
        b.label(p, "declines_then_alternative", False, named)
        end, _, total = b.shop(p, b.when(), buy=False)
        amount = round(sum(c[2] for c in b.products(r.randint(1, 3))), 2)
        s = b.click(p, end + _sec(b, 5, 30), "checkout", "/checkout")
        for _ in range(r.randint(2, 4)):
            b.tx(p, s, amount, "failed", method="card", card=p.cards[0])
            s += _sec(b, 20, 120)
        method = r.choice(["paypal", "card", "apple_pay" if p.device.kind == "ios" else "google_pay"])
        b.click(p, s, "purchase", "/checkout/confirm")
        b.tx(p, s + _sec(b, 1, 3), amount, method=method, card=p.cards[1] if method == "card" else "")


def traveller(b: Book, named=True) -> None:
    """A long-standing customer on a trip: the same phone or laptop, a hotel or roaming IP in
    another country, buys something expensive (a camera, a coat) without any other oddity."""
    r = b.rng
    for i in range(12):
        p = b.person(b.uid("tv", i))
        b.history(p, sessions=(4, 8), days=(3, 14), buy_rate=0.6)
        b.label(p, "traveller", False, named)
        away = r.choice(FAR + NEIGHBOURS.get(p.country, []))
        away = away if away != p.country else "PT"
        b.shop(p, b.when(), items=r.randint(2, 5), low=180, ip=b.ip(), country=away, login=r.random() < 0.3)


# -- further ordinary classes --------------------------------------------------------------------
def corporate_egress(b: Book, named=False) -> None:
    """Office workers shopping at lunch behind the company's single egress IP (web proxy)."""
    r = b.rng
    ip, t0 = b.ip(), DAY + td(hours=r.uniform(4.5, 5.5))
    for i in range(14):
        p = _customer(b, b.uid("co", i), country="US", kind="web")
        b.label(p, "corporate_egress", False, named)
        b.shop(p, t0 + td(minutes=r.uniform(0, 50)), ip=ip, tx_ip=ip, buy=r.random() < 0.5)


def campus_wifi(b: Book, named=False) -> None:
    """Students in the evening on the university network (one NAT address per campus)."""
    r = b.rng
    ip, t0 = b.ip(), DAY + td(hours=r.uniform(11, 13))
    for i in range(14):
        p = _customer(b, b.uid("cw", i), country="GB")
        b.label(p, "campus_wifi", False, named)
        b.shop(p, t0 + td(minutes=r.uniform(0, 35)), ip=ip, tx_ip=ip, buy=r.random() < 0.4, high=80,
               entry=r.choice(["social", "direct", "search"]))


def family_card(b: Book, named=False) -> None:
    """A household: two to four family accounts paying with the parent's card from home."""
    r = b.rng
    n = 0
    for family in range(4):
        card, ip, country = b.card(), b.ip(), r.choice(["US", "CA", "DE"])
        for _ in range(r.randint(3, 4)):
            p = b.person(b.uid("fc", n), country=country)
            p.ip, p.cards, p.method = ip, [card], "card"     # home wifi and the parent's card, as before
            b.history(p, sessions=(2, 6), days=(1, 14))
            n += 1
            b.label(p, "family_card", False, named)
            b.shop(p, b.when((2, 14)), card=card, method="card")


def gift_buyer(b: Book, named=False) -> None:
    """Buying a present: a category they never bought, a larger basket, often a new card or
    PayPal, a different delivery address."""
    r = b.rng
    for i in range(10):
        p = _customer(b, b.uid("gb", i))
        b.label(p, "gift_buyer", False, named)
        end, _, _ = b.shop(p, b.when(), category=r.choice(["toys", "beauty", "electronics"]), items=r.randint(2, 4),
                           low=60, card=b.card() if r.random() < 0.5 else None, views=r.randint(5, 12))
        b.click(p, end - _sec(b, 15, 40), "page_view", "/checkout/address", ship_to="new", gift_wrap=True)


def sale_power_shopper(b: Book, named=False) -> None:
    """A deal hunter on a sale day: several visits and orders within a few hours, quick clicks on
    known products, maybe a decline when the card limit is hit."""
    r = b.rng
    for i in range(10):
        p = _customer(b, b.uid("ps", i))
        b.label(p, "sale_power_shopper", False, named)
        t = b.when((1, 8))
        for _ in range(r.randint(3, 6)):
            end, _, total = b.shop(p, t, pace=7, entry=r.choice(["email", "push", "direct"]), views=r.randint(3, 12))
            if r.random() < 0.2:
                b.tx(p, end + _sec(b, 20, 60), total, "failed")
            t = end + td(minutes=r.uniform(4, 45))


def phone_change(b: Book, named=False) -> None:
    """A customer with a new phone: the app is new (new device), they forgot the password
    (reset ticket), log in from home or their carrier and shop as usual."""
    r = b.rng
    for i in range(10):
        p = _customer(b, b.uid("pc", i), kind=r.choice(["ios", "android"]))
        b.label(p, "phone_change", False, named)
        t = b.when()
        new = b.device(r.choice(["ios", "android"]))
        while new.ua == p.device.ua:
            new = b.device(r.choice(["ios", "android"]))
        b.ticket(p, t, "password_reset", channel="app", resolve_hours=r.uniform(0.01, 0.1))
        p.device = new
        b.shop(p, t + td(minutes=r.uniform(2, 15)), login=True, ip=r.choice([p.ip, b.ip()]))


def vpn_privacy(b: Book, named=False) -> None:
    """A privacy-minded customer whose VPN exits in a neighbouring country (a datacenter IP),
    same laptop as always, ordinary basket."""
    r = b.rng
    for i in range(10):
        p = _customer(b, b.uid("vp", i), kind="web")
        b.label(p, "vpn_privacy", False, named)
        exit_country = r.choice(NEIGHBOURS.get(p.country, ["NL"]))
        vpn = b.ip()
        b.shop(p, b.when(), ip=vpn, country=exit_country, tx_ip=vpn)


def comparison_shopper(b: Book, named=False) -> None:
    """Researching a purchase: opens dozens of products in tabs (views a few seconds apart), reads
    reviews, compares for an hour, maybe buys one."""
    r = b.rng
    for i in range(10):
        p = _customer(b, b.uid("cm", i))
        b.label(p, "comparison_shopper", False, named)
        end, _, _ = b.shop(p, b.when(), views=r.randint(15, 35), pace=5, buy=False, category="electronics")
        b.shop(p, end + td(minutes=r.uniform(3, 25)), views=r.randint(10, 30), pace=40, buy=r.random() < 0.6,
               category="electronics", items=1)


def new_customer_big_order(b: Book, named=False) -> None:
    """A first-time customer furnishing a flat: signs up and places one large order."""
    r = b.rng
    for i in range(10):
        p = b.person(b.uid("nc", i))
        b.label(p, "new_customer_big_order", False, named)
        t = b.when()
        b.click(p, t, "signup", "/account/new")
        b.shop(p, t + _sec(b, 30, 120), views=r.randint(6, 15), items=r.randint(3, 6), low=120, category="home")


def network_retry(b: Book, named=False) -> None:
    """A payment that times out on a bad mobile connection is retried with the same card a few
    times within a minute or two, then goes through."""
    r = b.rng
    for i in range(10):
        p = _customer(b, b.uid("nr", i), kind=r.choice(["ios", "android"]))
        b.label(p, "network_retry", False, named)
        end, _, _ = b.shop(p, b.when(), buy=False)
        prod = b.products(1)[0]
        s = b.click(p, end + _sec(b, 3, 15), "checkout", "/checkout")
        for _ in range(r.randint(1, 3)):
            b.tx(p, s, prod[2], "failed", method="card")
            s += _sec(b, 8, 40)
        b.click(p, s, "purchase", "/checkout/confirm")
        b.tx(p, s + _sec(b, 0.5, 2), prod[2], method="card")


def honest_delivery_issue(b: Book, named=False) -> None:
    """A real parcel problem: a customer asks where the order is, once, a few days after buying."""
    r = b.rng
    for i in range(10):
        p = b.person(b.uid("hd", i))
        b.history(p, sessions=(2, 5), days=(3, 14), buy_rate=0.8)
        b.label(p, "honest_delivery_issue", False, named)
        t = b.when()
        b.ticket(p, t, r.choice(["delivery", "item_not_received"]), channel=r.choice(["chat", "email"]),
                 resolve_hours=r.uniform(2, 40))
        if r.random() < 0.5:
            b.shop(p, t + td(minutes=r.uniform(5, 60)), buy=r.random() < 0.5)


def autofill_checkout(b: Book, named=False) -> None:
    """A returning desktop customer with a password manager and a saved card: straight to the
    product from a bookmark or email, cart, autofilled checkout, done in seconds."""
    r = b.rng
    for i in range(10):
        p = _customer(b, b.uid("au", i), kind="web")
        b.label(p, "autofill_checkout", False, named)
        t = b.when()
        prod = b.products(1)[0]
        s = b.click(p, t, "product_view", f"/p/{prod[0]}", prod, entry_point=r.choice(["email", "direct"]))
        s = b.click(p, s + _sec(b, 2, 8), "add_to_cart", f"/p/{prod[0]}", prod)
        s = b.click(p, s + _sec(b, 1, 3), "checkout", "/checkout")
        s = b.click(p, s + _sec(b, 2, 6), "purchase", "/checkout/confirm")
        b.tx(p, s + _sec(b, 0.3, 1.5), prod[2])


def call_center_orders(b: Book, named=False) -> None:
    """Phone orders (mail order / telephone order): agents of the shop's call centre place orders
    for customers who call in, all from the centre's IP on the agents' desktops, quickly, since the
    agent knows the screens; the customer's own card is read out over the phone."""
    r = b.rng
    ip, agents = b.ip(), [b.device("web") for _ in range(4)]
    t0 = b.when((1, 6))
    for i in range(12):
        p = _customer(b, b.uid("ca", i), country="US")
        b.label(p, "call_center_orders", False, named)
        t = t0 + td(minutes=r.uniform(0, 150))
        prod = b.products(1)[0]
        dev = r.choice(agents)
        s = b.click(p, t, "page_view", "/agent/order", ip=ip, device=dev, channel="phone")
        s = b.click(p, s + _sec(b, 8, 40), "product_view", f"/p/{prod[0]}", prod, ip=ip, device=dev)
        s = b.click(p, s + _sec(b, 3, 10), "add_to_cart", f"/p/{prod[0]}", prod, ip=ip, device=dev)
        s = b.click(p, s + _sec(b, 5, 20), "checkout", "/checkout", ip=ip, device=dev)
        s = b.click(p, s + _sec(b, 20, 90), "purchase", "/checkout/confirm", ip=ip, device=dev)
        b.tx(p, s + _sec(b, 0.5, 2), prod[2] * r.randint(1, 2), method="card", ip=ip)


def small_business_bulk(b: Book, named=False) -> None:
    """An office manager restocking: large quantities of the usual supplies on the company card,
    an order far bigger than a household's, as every month."""
    r = b.rng
    for i in range(10):
        p = b.person(b.uid("sm", i), kind="web")
        b.history(p, sessions=(2, 4), days=(2, 14), buy_rate=0.9)
        b.label(p, "small_business_bulk", False, named)
        prod = r.choice(p.products)
        qty = r.randint(6, 30)
        end, _, _ = b.shop(p, b.when((1, 9)), views=r.randint(2, 5), buy=False, entry=r.choice(["order_history", "direct"]))
        s = b.click(p, end + _sec(b, 5, 30), "add_to_cart", f"/p/{prod[0]}", prod, quantity=qty)
        s = b.click(p, s + _sec(b, 10, 40), "checkout", "/checkout")
        s = b.click(p, s + _sec(b, 20, 80), "purchase", "/checkout/confirm")
        b.tx(p, s + _sec(b, 0.5, 2), round(prod[2] * qty, 2), method="card")


def background(b: Book, named=False) -> None:
    """The everyday population: 220 customers with their own devices, home IPs, cards and
    countries, a few visits over the prior two weeks and zero to two on the evaluated day."""
    r = b.rng
    for i in range(220):
        p = _customer(b, f"bg{i:04d}")
        b.label(p, "background", False, named)
        t = b.when((0, 14))
        for _ in range(r.choice([0, 1, 1, 1, 2])):
            end, _, _ = b.shop(p, t, buy=r.random() < 0.4, entry=r.choice(["direct", "search", "email", "push", "social"]))
            t = end + td(hours=r.uniform(1, 4))


NAMED = [carrier_nat, express_wallet_push, buy_again, declines_then_alternative, traveller]
OTHERS = [corporate_egress, campus_wifi, family_card, gift_buyer, sale_power_shopper, phone_change, vpn_privacy,
          comparison_shopper, new_customer_big_order, network_retry, honest_delivery_issue, autofill_checkout,
          call_center_orders, small_business_bulk]
